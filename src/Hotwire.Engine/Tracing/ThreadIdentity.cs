using Hotwire.Elf;
using Hotwire.Patching;

namespace Hotwire.Tracing;

/// <summary>How generated code finds the calling thread's kernel tid in one load.</summary>
public static class ThreadIdentity
{
    /// <summary>
    /// glibc publishes the offset of the kernel tid in its thread descriptor for libthread_db:
    /// <c>_thread_db_pthread_tid</c> = { size in bits, count, offset }. Read it from the libc the
    /// process uses (or will use, at launch: the one the dynamic linker would load).
    /// </summary>
    public static int TidOffset(Session session)
    {
        string? libc = session.Image.Modules.Select(m => m.Path).FirstOrDefault(p => Path.GetFileName(p).StartsWith("libc.so", StringComparison.Ordinal))
            ?? new[] { "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib64/libc.so.6" }.FirstOrDefault(File.Exists);
        if (libc is null)
        {
            throw new HotwireException($"pid {session.Pid} does not use glibc: the function tracer finds threads through glibc's thread descriptor");
        }
        ElfFile elf = ElfFile.Load($"/proc/{session.Pid}/root{libc}") ;
        ElfSymbol? sym = elf.ReadSymbols(dynamic: true).Cast<ElfSymbol?>().FirstOrDefault(s => s!.Value.Name == "_thread_db_pthread_tid");
        Span<byte> desc = stackalloc byte[12];
        if (sym is null || !elf.TryReadVirtual(sym.Value.Value, desc) || BitConverter.ToUInt32(desc) != 32)
        {
            throw new HotwireException($"{libc} does not describe its thread layout (_thread_db_pthread_tid); the function tracer cannot identify threads");
        }
        return (int)BitConverter.ToUInt32(desc[8..]);
    }
}
