namespace Hotwire.Tests;

public class DemoCommandTests
{
    [Fact]
    public void Demo_builds_runs_and_lists_the_live_demo_functions_then_exits_0()
    {
        CliResult result = HotwireCli.Run("demo");
        Assert.True(result.ExitCode == 0, result.Stderr);
        foreach (string f in new[] { "handle_request", "parse_request", "lookup_user", "checksum", "fib" })
        {
            Assert.Contains(f, result.Stdout);
        }
        // The demo process is gone afterwards.
        Assert.DoesNotContain(Directory.GetDirectories("/proc"), d => File.Exists(Path.Combine(d, "comm"))
            && SafeRead(Path.Combine(d, "exe")).EndsWith("/demo", StringComparison.Ordinal));
    }

    private static string SafeRead(string link)
    {
        try
        {
            return new FileInfo(link).LinkTarget ?? "";
        }
        catch (IOException)
        {
            return "";
        }
        catch (UnauthorizedAccessException)
        {
            return "";
        }
    }
}
