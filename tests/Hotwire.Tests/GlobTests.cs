namespace Hotwire.Tests;

public class GlobTests
{
    [Theory]
    [InlineData("schedule", "schedule", true)]
    [InlineData("schedule", "schedule_tail", false)]
    [InlineData("sched*", "schedule_tail", true)]
    [InlineData("*tail", "schedule_tail", true)]
    [InlineData("*dule*", "schedule_tail", true)]
    [InlineData("s?hedule", "schedule", true)]
    [InlineData("s?hedule", "shedule", false)]
    [InlineData("f[0-9]", "f7", true)]
    [InlineData("f[0-9]", "fx", false)]
    [InlineData("f[!0-9]", "fx", true)]
    [InlineData("f[^0-9]", "f7", false)]
    [InlineData("a*b*c", "axxbyyc", true)]
    [InlineData("a*b*c", "axxbyy", false)]
    [InlineData("*", "", true)]
    [InlineData("f[", "f[", true)]
    public void Glob_matches_like_ftrace_filters(string pattern, string name, bool expected)
        => Assert.Equal(expected, Glob.IsMatch(pattern, name));

    [Fact]
    public void Filter_with_only_negations_starts_from_everything()
    {
        var sites = new[] { Site("a"), Site("b"), Site("c") };
        Assert.Equal(["a", "c"], new FunctionFilter(["!b"]).Select(sites).Select(s => s.Function));
    }

    [Fact]
    public void Notrace_wins_over_filter_and_module_qualifier_limits()
    {
        var sites = new[] { Site("a", "/lib/libx.so"), Site("a", "/bin/prog"), Site("ab", "/bin/prog") };
        Assert.Equal(["/bin/prog"], new FunctionFilter(["a:mod:prog"]).Select(sites).Select(s => s.Module));
        Assert.Equal(["ab"], new FunctionFilter(["a*", "!a"]).Select(sites).Select(s => s.Function));
    }

    [Fact]
    public void A_pattern_that_matches_nothing_is_an_error_naming_near_names()
    {
        var e = Assert.Throws<HotwireException>(() => new FunctionFilter(["comptue"]).Select([Site("compute"), Site("main")]));
        Assert.Equal("no traceable function matches 'comptue'; near names: compute", e.Message);
    }

    [Fact]
    public void A_module_name_that_names_no_module_is_an_error_listing_the_modules()
    {
        // /usr/bin/redis-server is a link to redis-check-rdb: the module has the name of the file.
        var e = Assert.Throws<HotwireException>(() => new FunctionFilter(["*:mod:redis-server"])
            .Select([Site("main", "/usr/bin/redis-check-rdb"), Site("malloc", "/lib/libc.so.6")]));
        Assert.Equal("no traceable function matches '*:mod:redis-server': no module with functions is named 'redis-server' (modules: libc.so.6, redis-check-rdb)", e.Message);
    }

    private static PatchSite Site(string name, string module = "/bin/prog")
        => new(name, true, module, 0x1000, 0x1000, SiteKind.Nop5, [0x0f, 0x1f, 0x44, 0, 0], false);
}
