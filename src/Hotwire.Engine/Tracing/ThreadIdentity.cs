using Hotwire.Elf;
using Hotwire.Patching;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Tracing;

/// <summary>How generated code finds the calling thread's kernel tid in one load.</summary>
public static class ThreadIdentity
{
    /// <summary>
    /// glibc publishes the offset of the kernel tid in its thread descriptor for libthread_db:
    /// <c>_thread_db_pthread_tid</c> = { size in bits, count, offset }. Read it from the libc the
    /// process uses (or will use, at launch: the one the dynamic linker would load).
    /// </summary>
    internal static int TidOffset(IOpsHost session)
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

/// <summary>
/// The table generated code finds a thread's slot in (a ring buffer, a shadow-stack record, a
/// counter row): indexed by kernel tid (read at fs:[<see cref="TidOffset"/>]), holding slot + 1
/// (0: the thread has none yet). One definition for every tracer that claims per-thread state.
/// </summary>
/// <param name="PidMax">the largest tid the table has an entry for (kernel.pid_max)</param>
/// <param name="Address">the table in the target</param>
internal readonly record struct TidTable(int TidOffset, int PidMax, ulong Address)
{
    /// <summary>
    /// eax = the calling thread's slot + 1; jumps to <paramref name="tooLarge"/> for a tid beyond
    /// the table and to <paramref name="unclaimed"/> when it holds 0. Uses r11.
    /// </summary>
    public void EmitLookup(Assembler a, Label tooLarge, Label unclaimed)
    {
        a.mov(eax, __dword_ptr.fs[TidOffset]);
        a.cmp(eax, PidMax);
        a.ja(tooLarge);
        a.mov(r11, Address);
        a.mov(eax, __dword_ptr[r11 + rax * 4]);
        a.test(eax, eax);
        a.jz(unclaimed);
    }

    /// <summary>
    /// The calling thread's entry = <paramref name="slotPlusOne"/> (its claim, once the slot is
    /// its own); leaves the tid in edx. Uses <paramref name="scratch"/>.
    /// </summary>
    public void EmitClaim(Assembler a, AssemblerRegister32 slotPlusOne, AssemblerRegister64 scratch)
    {
        a.mov(edx, __dword_ptr.fs[TidOffset]);
        a.mov(scratch, Address);
        a.mov(__dword_ptr[scratch + rdx * 4], slotPlusOne);
    }
}
