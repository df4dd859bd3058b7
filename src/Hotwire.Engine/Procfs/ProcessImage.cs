using Hotwire.Elf;
using Hotwire.Patching;
using Hotwire.Symbols;

namespace Hotwire.Procfs;

/// <summary>An ELF image mapped in a process: its file, where it is loaded, and its sites at runtime addresses.</summary>
public sealed class LoadedModule
{
    internal LoadedModule(string path, ulong start, ulong end, ulong bias, ElfFile elf, ModuleSites linkSites, IReadOnlyList<PatchSite> sites)
    {
        Path = path;
        Start = start;
        End = end;
        Bias = bias;
        Elf = elf;
        LinkSites = linkSites;
        Sites = sites;
    }

    public string Path { get; }

    public string Name => System.IO.Path.GetFileName(Path);

    /// <summary>Lowest and highest mapped address of the image.</summary>
    public ulong Start { get; }

    public ulong End { get; }

    /// <summary>runtime address = link-time address + Bias.</summary>
    public ulong Bias { get; }

    public ElfFile Elf { get; }

    public ModuleSites LinkSites { get; }

    /// <summary>Sites at runtime addresses; <see cref="PatchSite.OriginalBytes"/> are the file's bytes.</summary>
    public IReadOnlyList<PatchSite> Sites { get; }
}

/// <summary>The ELF modules of a live process, read from /proc without stopping it.</summary>
public sealed class ProcessImage
{
    private ProcessImage(int pid, IReadOnlyList<LoadedModule> modules)
    {
        Pid = pid;
        Modules = modules;
        Symbolizer = new Symbolizer(modules);
    }

    public int Pid { get; }

    public IReadOnlyList<LoadedModule> Modules { get; }

    public Symbolizer Symbolizer { get; }

    public IEnumerable<PatchSite> AllSites => Modules.SelectMany(m => m.Sites);

    public static ProcessImage Load(int pid) => Load(pid, null);

    /// <summary>
    /// The modules mapped now; those of <paramref name="previous"/> still mapped at the same place
    /// are kept as they are (not read again): after a dlopen only the new library is parsed.
    /// </summary>
    public static ProcessImage Load(int pid, ProcessImage? previous)
    {
        if (pid <= 0)
        {
            throw new HotwireException($"invalid pid {pid}: give the positive process id of a running program");
        }
        List<MemoryMapping> maps = ProcMaps.Read(pid);
        if (previous is null)
        {
            CheckMainProgram(pid);
        }
        var known = previous?.Modules.ToDictionary(m => (m.Path, m.Start)) ?? [];

        var modules = new List<LoadedModule>();
        foreach (IGrouping<(string, ulong), MemoryMapping> file in maps
            .Where(m => m.IsFileBacked)
            .GroupBy(m => (m.Path, m.Inode)))
        {
            if (!file.Any(m => m.IsExecutable))
            {
                continue;
            }
            MemoryMapping first = file.MinBy(m => m.Start);
            if (known.TryGetValue((first.Path, first.Start), out LoadedModule? same))
            {
                modules.Add(same);
                continue;
            }
            ElfFile? elf = TryOpenModule(pid, first);
            if (elf is null || !elf.TryComputeBias(first.Start, first.Offset, out ulong bias))
            {
                continue;
            }
            ModuleSites linkSites = SiteDiscovery.Scan(elf);
            var sites = new List<PatchSite>(linkSites.Sites.Count);
            foreach (PatchSite s in linkSites.Sites)
            {
                sites.Add(s with { Address = s.LinkAddress + bias, Module = first.Path });
            }
            modules.Add(new LoadedModule(first.Path, first.Start, file.Max(m => m.End), bias, elf, linkSites, sites));
        }
        return new ProcessImage(pid, modules);
    }

    private static void CheckMainProgram(int pid)
    {
        Span<byte> head = stackalloc byte[20];
        try
        {
            using FileStream exe = File.OpenRead($"/proc/{pid}/exe");
            if (exe.ReadAtLeast(head, head.Length, throwOnEndOfStream: false) < head.Length || !ElfFile.HasElfMagic(head))
            {
                return;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return; // maps were readable; the per-module reads say more if something is wrong
        }
        if (head[4] == 1)
        {
            throw new HotwireException($"pid {pid} runs a 32-bit program; Hotwire supports 64-bit x86-64 processes only");
        }
        if (head[18] != ElfFile.EM_X86_64)
        {
            throw new HotwireException($"pid {pid} does not run an x86-64 program; Hotwire supports x86-64 processes only");
        }
    }

    // The file as the process sees it (through its root, so containers work), else the mapping itself
    // (/proc/PID/map_files), which also serves files deleted or replaced since they were mapped.
    private static ElfFile? TryOpenModule(int pid, MemoryMapping mapping)
    {
        string viaRoot = $"/proc/{pid}/root{mapping.Path}";
        string viaMapFiles = $"/proc/{pid}/map_files/{mapping.Start:x}-{mapping.End:x}";
        Span<byte> magic = stackalloc byte[4];
        foreach (string candidate in mapping.IsDeleted ? [viaMapFiles] : new[] { viaRoot, viaMapFiles })
        {
            byte[] bytes;
            try
            {
                using (FileStream f = File.OpenRead(candidate))
                {
                    if (f.ReadAtLeast(magic, 4, throwOnEndOfStream: false) < 4 || !ElfFile.HasElfMagic(magic))
                    {
                        return null;
                    }
                }
                bytes = File.ReadAllBytes(candidate);
                if (new FileInfo(candidate).Length != bytes.Length)
                {
                    continue;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }
            try
            {
                return ElfFile.Parse(bytes, mapping.Path);
            }
            catch (HotwireException)
            {
                return null; // not an x86-64 ELF64: nothing of ours to patch in it
            }
        }
        return null;
    }

    /// <summary>Reads the bytes at each site as they are in the process now.</summary>
    public static Dictionary<ulong, byte[]> ReadLiveBytes(IMemoryReader memory, IEnumerable<PatchSite> sites)
    {
        var result = new Dictionary<ulong, byte[]>();
        foreach (PatchSite s in sites)
        {
            var buf = new byte[Math.Max(s.Kind.Length(), 1)];
            if (memory.TryRead(s.Address, buf))
            {
                result[s.Address] = buf;
            }
        }
        return result;
    }
}
