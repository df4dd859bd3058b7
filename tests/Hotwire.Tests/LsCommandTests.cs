namespace Hotwire.Tests;

/// <summary>`hotwire ls` on files and live processes, checked against objdump and /proc/PID/maps.</summary>
public class LsCommandTests
{
    public static TheoryData<Flavour> FileFlavours => new()
    {
        Flavour.Nop5, Flavour.PatchablePie, Flavour.FentryPie, Flavour.Endbr, Flavour.EndbrNop5, Flavour.Cxx,
    };

    [Theory]
    [MemberData(nameof(FileFlavours))]
    public void Ls_of_a_file_lists_exactly_the_sites_objdump_shows(Flavour flavour)
    {
        string prog = TargetBuilder.Get(flavour);
        AssertListingMatchesObjdump(prog, HotwireCli.Run("ls", "--addrs", prog), bias: 0);
    }

    [Fact]
    public void Ls_of_a_shared_library_lists_its_sites()
    {
        string lib = TargetBuilder.LibraryOf(TargetBuilder.Get(Flavour.SharedLibrary));
        CliResult result = HotwireCli.Run("ls", "--addrs", lib);
        AssertListingMatchesObjdump(lib, result, bias: 0);
        Assert.Contains(result.Lines, l => l.EndsWith(" lib_square [libflav.so]", StringComparison.Ordinal));
    }

    [Fact]
    public void Ls_without_addrs_prints_name_and_module_like_available_filter_functions()
    {
        string prog = TargetBuilder.Get(Flavour.Nop5);
        CliResult result = HotwireCli.Run("ls", prog);
        Assert.Equal(0, result.ExitCode);
        var expected = Objdump.Sites(prog).Select(s => $"{s.Name} [prog]").Order(StringComparer.Ordinal);
        Assert.Equal(expected, result.Lines.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Ls_shows_demangled_cxx_names()
    {
        CliResult result = HotwireCli.Run("ls", TargetBuilder.Get(Flavour.Cxx), "*shop::*");
        Assert.Equal(0, result.ExitCode);
        Assert.Equal(
            new[]
            {
                "long shop::twice<long>(long) [prog]", "double shop::twice<double>(double) [prog]",
                "shop::Cart::add(long) [prog]", "shop::Cart::sum() const [prog]",
                "shop::discount(long) [prog]", "shop::discount(long, int) [prog]",
            }.Order(StringComparer.Ordinal),
            result.Lines.Where(l => l.Contains("shop::", StringComparison.Ordinal)).Order(StringComparer.Ordinal));
    }

    [Theory]
    [MemberData(nameof(FileFlavours))]
    public void Ls_of_a_running_process_lists_sites_at_runtime_addresses(Flavour flavour)
    {
        string prog = TargetBuilder.Get(flavour);
        using TargetProcess target = TargetProcess.Start(prog);
        CliResult result = HotwireCli.Run("ls", "--addrs", "--pid", target.Pid.ToString());
        // Non-PIE programs are linked at their runtime address; PIE at 0, so the bias is the mapped base.
        ulong bias = flavour is Flavour.Nop5 or Flavour.EndbrNop5 ? 0 : Objdump.MappedBase(target.Pid, prog);
        AssertListingMatchesObjdump(prog, result, bias);
    }

    [Fact]
    public void Ls_of_a_running_process_includes_its_shared_libraries_at_their_load_address()
    {
        string prog = TargetBuilder.Get(Flavour.SharedLibrary);
        string lib = TargetBuilder.LibraryOf(prog);
        using TargetProcess target = TargetProcess.Start(prog);
        CliResult result = HotwireCli.Run("ls", "--addrs", "--pid", target.Pid.ToString(), "*:mod:libflav.so");
        Assert.Equal(0, result.ExitCode);
        var expected = Objdump.Sites(lib).Select(s => s with { Address = s.Address + Objdump.MappedBase(target.Pid, lib) });
        Assert.Equal(Sorted(expected), Sorted(Objdump.ParseLs(result.Lines).Select(x => x.Site)));
    }

    [Fact]
    public void Ls_finds_all_50000_functions_of_the_large_program()
    {
        string prog = TargetBuilder.Get(Flavour.Many);
        CliResult result = HotwireCli.Run("ls", "--addrs", prog);
        AssertListingMatchesObjdump(prog, result, bias: 0);
        Assert.Equal(50_002, result.Lines.Length); // f0..f49999, spin and main
    }

    [Fact]
    public void Globs_follow_ftrace_filter_semantics()
    {
        string prog = TargetBuilder.Get(Flavour.Nop5);
        Assert.Equal(["compute [prog]"], HotwireCli.Run("ls", prog, "compute").Lines);
        Assert.Equal(["leaf_add [prog]"], HotwireCli.Run("ls", prog, "*_add").Lines);
        Assert.Equal(["compute [prog]", "work_once [prog]"], HotwireCli.Run("ls", prog, "[cw]o*").Lines.Order(StringComparer.Ordinal));
        Assert.Equal(["helper_mul [prog]", "leaf_add [prog]", "main [prog]"],
            HotwireCli.Run("ls", prog, "*", "!compute", "!work_*").Lines.Order(StringComparer.Ordinal));
        Assert.Equal(["compute [prog]", "leaf_add [prog]", "main [prog]"],
            HotwireCli.Run("ls", prog, "!helper_mu?", "!work_once").Lines.Order(StringComparer.Ordinal));
    }

    private static void AssertListingMatchesObjdump(string binary, CliResult result, ulong bias)
    {
        Assert.True(result.ExitCode == 0, result.Stderr);
        string module = Path.GetFileName(binary);
        List<ExpectedSite> expected = Objdump.Sites(binary);
        Assert.NotEmpty(expected);
        var listed = Objdump.ParseLs(result.Lines).Where(x => x.Module == module).Select(x => x.Site);
        Assert.Equal(Sorted(expected.Select(s => s with { Address = s.Address + bias })), Sorted(listed));
    }

    private static List<ExpectedSite> Sorted(IEnumerable<ExpectedSite> sites) => sites.OrderBy(s => s.Address).ToList();
}
