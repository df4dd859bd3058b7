namespace Hotwire.Tests;

/// <summary>`hotwire top` in a real terminal (tmux: start it, read the screen, press keys) and with its output in a pipe.</summary>
[Collection("engine")]
public class TopCommandTests
{
    [Fact]
    public void Top_in_a_terminal_shows_the_hottest_function_first_refreshes_and_detaches_on_q()
    {
        string exe = TargetBuilder.Get(Flavour.Metrics);
        using TargetProcess target = TargetProcess.Start(exe);
        target.WriteLine("spin");                           // hot() ~20 us and cold() ~ns, in turn, in thread "spinner"
        Assert.Equal("spinning", target.ReadLine(TimeSpan.FromSeconds(10)));
        using var tmux = new Tmux();
        string status = Path.Combine(Path.GetTempPath(), $"hotwire-top-{Guid.NewGuid():N}.status");
        tmux.Start($"{HotwireCli.ExecutablePath} top --pid {target.Pid} -F hot -F cold -F work -F leaf; echo exit=$? > {status}");

        string screen = tmux.AwaitScreen(s => FunctionRows(s).Count >= 2, "hot and cold in the table");
        Assert.Contains($"hotwire top — pid {target.Pid} (prog), 4 functions traced, sorted by total time/s", screen);
        Assert.Equal("hot", FunctionRows(screen)[0]);
        Assert.Contains("spinner", screen);                 // the threads table

        target.WriteLine("calls 200000");                  // work and leaf appear: the numbers refresh
        Assert.Equal("done 200000", target.ReadLine(TimeSpan.FromSeconds(20)));
        screen = tmux.AwaitScreen(s => FunctionRows(s).Contains("work"), "work after it was called");
        Assert.Equal("hot", FunctionRows(screen)[0]);

        tmux.Keys("a");                                     // sorted by average: hot (20 us) still first
        screen = tmux.AwaitScreen(s => s.Contains("sorted by average"), "the average sort");
        Assert.Equal("hot", FunctionRows(screen)[0]);

        tmux.Keys("q");
        var deadline = Stopwatch.StartNew();
        while (!File.Exists(status) && deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            Thread.Sleep(100);
        }
        Assert.Equal("exit=0", File.ReadAllText(status).Trim());
        File.Delete(status);
        Assert.False(target.Process.HasExited);
        KillTests.AssertTextEqualsFile(target.Pid, exe, "after hotwire top");
    }

    [Fact]
    public void Top_with_its_output_in_a_pipe_prints_plain_blocks_hottest_first()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Metrics));
        target.WriteLine("spin");
        Assert.Equal("spinning", target.ReadLine(TimeSpan.FromSeconds(10)));
        CliResult result = HotwireCli.Run("top", "--pid", target.Pid.ToString(), "-F", "hot", "-F", "cold", "--duration", "2.5", "--sort", "calls", "-n", "5");
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Contains($"pid {target.Pid} runs on with its original code", result.Stderr);
        string[] lines = result.Lines;
        Assert.StartsWith($"# hotwire top — pid {target.Pid} (prog), 2 functions traced, sorted by calls/s at ", lines[0]);
        Assert.Equal("#  CALLS/S    TOTAL/S     SELF/S        AVG        MAX  FUNCTION [MODULE]", lines[1]);
        string[] rows = [.. lines.Skip(2).TakeWhile(l => !l.StartsWith('#'))];
        Assert.Equal(2, rows.Length);
        Assert.All(rows, r => Assert.Matches(@"^\s+\d+k?\s+\S+\s+\S+\s+\S+\s+\S+  (hot|cold) \[prog\]$", r));
        Assert.Contains(lines, l => l.StartsWith("# threads:", StringComparison.Ordinal) && l.Contains(" spinner-", StringComparison.Ordinal));
        CliResult total = HotwireCli.Run("top", "--pid", target.Pid.ToString(), "-F", "hot", "-F", "cold", "--duration", "1.5");
        Assert.True(total.ExitCode == 0, total.Stderr);
        Assert.EndsWith("  hot [prog]", total.Lines[2]);   // by total time: hot
    }

    [Theory]
    [InlineData("--sort", "name", "--sort takes calls, total, self, avg or max, not 'name'")]
    [InlineData("--lines", "-1", "--lines takes a number of functions, not -1")]
    public void Bad_top_options_are_one_line_errors(string option, string value, string message)
    {
        CliResult result = HotwireCli.Run("top", "--pid", "1", option, value);
        Assert.Equal(2, result.ExitCode);
        Assert.Equal($"hotwire: {message}", result.Stderr.Trim());
    }

    // The FUNCTION column of the table's rows, top to bottom.
    private static List<string> FunctionRows(string screen)
    {
        string[] lines = screen.Split('\n');
        int header = Array.FindIndex(lines, l => l.Contains("FUNCTION") && l.Contains("CALLS/S"));
        var names = new List<string>();
        if (header < 0)
        {
            return names;
        }
        foreach (string line in lines.Skip(header + 1))
        {
            string[] words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (words.Length == 0 || words[0].StartsWith('─') || words[0].StartsWith('-'))
            {
                if (names.Count > 0)
                {
                    break;
                }
                continue;
            }
            if (words.Length < 7)
            {
                break;
            }
            names.Add(words[^2]);
        }
        return names;
    }

    /// <summary>A tmux server of its own (its own socket), one window 160×50, killed on dispose.</summary>
    private sealed class Tmux : IDisposable
    {
        private readonly string _socket = $"hotwire-test-{Guid.NewGuid():N}";

        public void Start(string command) => Run("new-session", "-d", "-x", "160", "-y", "50", "-s", "top", command);

        public void Keys(string keys) => Run("send-keys", "-t", "top", keys);

        public string Screen() => Run("capture-pane", "-p", "-t", "top");

        public string AwaitScreen(Func<string, bool> ready, string what)
        {
            string screen = "";
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < TimeSpan.FromSeconds(40))
            {
                screen = Screen();
                if (ready(screen))
                {
                    return screen;
                }
                Thread.Sleep(200);
            }
            throw new Xunit.Sdk.XunitException($"the screen never showed {what}:\n{screen}");
        }

        private string Run(params string[] args)
        {
            var psi = new ProcessStartInfo("tmux") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("-L");
            psi.ArgumentList.Add(_socket);
            foreach (string a in args)
            {
                psi.ArgumentList.Add(a);
            }
            psi.Environment["TERM"] = "xterm-256color";
            using Process p = Process.Start(psi) ?? throw new InvalidOperationException("tmux is not installed: run scripts/check-deps.sh --tests");
            string output = p.StandardOutput.ReadToEnd();
            string error = p.StandardError.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0)
            {
                throw new InvalidOperationException($"tmux {string.Join(' ', args)}: {error.Trim()}");
            }
            return output;
        }

        public void Dispose()
        {
            try
            {
                Run("kill-server");
            }
            catch (InvalidOperationException)
            {
            }
        }
    }
}
