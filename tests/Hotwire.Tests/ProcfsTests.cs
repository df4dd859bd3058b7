using Hotwire.Procfs;

namespace Hotwire.Tests;

public class ProcfsTests
{
    [Fact]
    public void Maps_lines_parse_including_paths_with_spaces_and_anonymous_mappings()
    {
        const string text =
            "00400000-00401000 r--p 00000000 fd:01 1234                               /opt/my app/prog\n" +
            "7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n" +
            "7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]\n" +
            "55d0c0000000-55d0c0001000 r-xp 00001000 fd:01 99 /usr/lib/libz.so.1 (deleted)\n";
        List<MemoryMapping> maps = ProcMaps.Parse(text);
        Assert.Equal(4, maps.Count);
        Assert.Equal(new MemoryMapping(0x400000, 0x401000, "r--p", 0, 1234, "/opt/my app/prog"), maps[0]);
        Assert.Equal("", maps[1].Path);
        Assert.False(maps[2].IsFileBacked);
        Assert.True(maps[2].IsExecutable);
        Assert.True(maps[3].IsDeleted);
        Assert.Equal(0x1000UL, maps[3].Offset);
    }

    [Fact]
    public void Symbolizer_names_addresses_as_module_symbol_offset()
    {
        string prog = TargetBuilder.Get(Flavour.SharedLibrary);
        using TargetProcess target = TargetProcess.Start(prog);
        ProcessImage image = ProcessImage.Load(target.Pid);
        LoadedModule lib = image.Modules.Single(m => m.Name == "libflav.so");
        var site = lib.Sites.Single(s => s.Function == "lib_poly");
        Assert.Equal("libflav.so!lib_poly", image.Symbolizer.Format(site.Address));
        Assert.Equal("libflav.so!lib_poly+0x5", image.Symbolizer.Format(site.Address + 5));
        LoadedModule libc = image.Modules.Single(m => m.Name.StartsWith("libc.so", StringComparison.Ordinal));
        ulong getpid = libc.Elf.ReadSymbols(dynamic: true).First(s => s.Name == "getpid").Value + libc.Bias;
        Assert.Matches(@"^libc\.so\.6!(__)?getpid$", image.Symbolizer.Format(getpid));
        Assert.Equal("0x10", image.Symbolizer.Format(0x10));
    }
}

public class PreflightTests
{
    [Fact]
    public void A_process_with_CET_shadow_stacks_is_refused_with_the_way_out()
    {
        string status = Path.Combine(Path.GetTempPath(), $"hotwire-status-{Environment.ProcessId}");
        File.WriteAllText(status, "Name:\tprog\nTracerPid:\t0\nx86_Thread_features:\tshstk wrss\nx86_Thread_features_locked:\tshstk\n");
        var e = Assert.Throws<HotwireException>(() => Hotwire.Injection.TargetChecks.CheckStatus(42, status));
        Assert.Contains("pid 42 runs with CET user shadow stacks", e.Message);
        Assert.Contains("glibc.cpu.x86_shstk=off", e.Message);
    }

    [Fact]
    public void A_process_without_shadow_stacks_or_tracer_passes()
    {
        string status = Path.Combine(Path.GetTempPath(), $"hotwire-status-ok-{Environment.ProcessId}");
        File.WriteAllText(status, "Name:\tprog\nTracerPid:\t0\nx86_Thread_features:\t\n");
        Hotwire.Injection.TargetChecks.CheckStatus(42, status);
    }
}
