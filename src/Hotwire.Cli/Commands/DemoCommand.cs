using System.CommandLine;
using System.Diagnostics;
using System.Security.Cryptography;
using Hotwire.Output;
using Hotwire.Patching;
using Hotwire.Procfs;
using Hotwire.Tracing;
using Spectre.Console;
using Recorder = Hotwire.Tracing.Recorder;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire demo</c>: builds the bundled demo service with gcc, starts it, attaches while its
/// threads run, traces every call for two seconds, detaches, and shows what happened. The demo
/// process is always stopped before returning.
/// </summary>
public static class DemoCommand
{
    private const int ShownLive = 12;

    public static Command Create()
    {
        var command = new Command("demo", "Build and run the bundled demo service, trace it live for two seconds, and detach");
        command.SetAction(_ => (int)Run());
        return command;
    }

    public static ExitCode Run()
    {
        // Piped or redirected: plain text, lines not wrapped at 80 columns.
        IAnsiConsole console = Console.IsOutputRedirected
            ? AnsiConsole.Create(new AnsiConsoleSettings { Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Interactive = InteractionSupport.No })
            : AnsiConsole.Console;
        if (Console.IsOutputRedirected)
        {
            console.Profile.Width = 1000;
        }
        string program = BuildDemo();
        int pid = StartDemo(program, out string readyFile);
        try
        {
            console.MarkupLine($"[bold]1.[/] The demo service runs as pid [bold]{pid}[/]: 3 worker threads answering requests (handle_request → parse_request, lookup_user → checksum, fib).");
            var buffers = new TraceBufferOptions();
            var clock = Stopwatch.StartNew();
            using Session session = Session.Attach(pid, new SessionOptions { ExtraSharedBytes = TraceBufferOptions.SharedBytes(buffers) });
            double attachMs = clock.Elapsed.TotalMilliseconds;
            console.MarkupLine($"[bold]2.[/] Attached in {attachMs:F0} ms: one thread was paused for {session.LongestStop.TotalMilliseconds:F1} ms, the others never stopped.");

            var tracer = new FunctionTracer(buffers, ["*:mod:demo"], ["main"]);
            string dir = Path.Combine(Path.GetTempPath(), $"hotwire-demo-{Environment.ProcessId}");
            var counts = new Dictionary<string, long>();
            TraceReader? reader = null;
            int shown = 0;
            var live = new List<string>();
            using var recorder = new Recorder(session, tracer, dir, (tid, e) =>
            {
                if (reader is null)
                {
                    return;
                }
                TraceLine line = reader.Line(tid, e);
                counts[line.Function] = counts.GetValueOrDefault(line.Function) + 1;
                if (shown++ < ShownLive)
                {
                    live.Add(FunctionTraceWriter.Format(line));
                }
            });
            IReadOnlyList<SiteRecord> sites = session.Register(tracer);
            recorder.NoteTracedSites(sites);
            ClockSample c0 = TscClock.Sample();
            Thread.Sleep(10);
            ClockSample c1 = TscClock.Sample();
            reader = new TraceReader(new TraceInfo
            {
                Pid = pid,
                Clock = new ClockInfo { StartTsc = c0.Tsc, StartNs = c0.MonotonicNs, EndTsc = c1.Tsc, EndNs = c1.MonotonicNs },
                Sites = sites.Select(s => new SiteInfo { Index = s.Index, Function = s.Function, Module = s.Site.ModuleName, Address = s.Address }).ToList(),
                Modules = session.Image.Modules.Select(Recorder.Module).ToList(),
                Threads = Directory.GetDirectories($"/proc/{pid}/task").Select(t => new ThreadInfo
                {
                    Tid = int.Parse(Path.GetFileName(t)),
                    Pid = pid,
                    Name = File.ReadAllText(Path.Combine(t, "comm")).Trim(),
                }).ToList(),
            });
            ulong before = Handled(session);
            recorder.Start();
            console.MarkupLine($"[bold]3.[/] Tracing {sites.Count} functions for 2 seconds; the first calls, as they happen:");
            Thread.Sleep(2000);
            session.Unregister(tracer);
            RecordSummary summary = recorder.Finish(program);
            ulong handledDuring = Handled(session) - before;
            session.Detach();
            foreach (string l in live)
            {
                console.WriteLine(l);
            }
            console.MarkupLine($"   … {summary.Events:N0} calls recorded in {summary.Elapsed.TotalSeconds:F1} s, {summary.Lost} lost.");
            var table = new Table().AddColumns("function", "calls", "per request");
            foreach ((string f, long n) in counts.OrderByDescending(kv => kv.Value))
            {
                table.AddRow(Markup.Escape(f), n.ToString("N0"), handledDuring > 0 ? ((double)n / handledDuring).ToString("F1") : "-");
            }
            console.Write(table);
            console.MarkupLine($"[bold]4.[/] Detached: every function has its original bytes back, and the service answered {handledDuring:N0} requests meanwhile without a restart.");
            console.MarkupLine($"Next: [bold]hotwire record --pid {pid}[/] then [bold]hotwire replay[/] on your own program (compile it with -fpatchable-function-entry=5).");
            Directory.Delete(dir, recursive: true);
            return ExitCode.Success;
        }
        finally
        {
            try
            {
                Process.GetProcessById(pid).Kill();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
            }
            File.Delete(readyFile);
        }
    }

    private static ulong Handled(Session session)
    {
        LoadedModule demo = session.Image.Modules.First(m => m.Name == "demo");
        var symbol = demo.Elf.ReadSymbols(dynamic: false).FirstOrDefault(s => s.Name == "handled");
        if (symbol.Name is null)
        {
            return 0;
        }
        using var memory = Hotwire.Memory.ProcessMemory.Open(session.Pid);
        var bytes = new byte[symbol.Size];
        memory.TryRead(symbol.Value + demo.Bias, bytes);
        ulong total = 0;
        for (int i = 0; i + 8 <= bytes.Length; i += 8)
        {
            total += BitConverter.ToUInt64(bytes, i);
        }
        return total;
    }

    // Started through sh so that the demo is not this process's child: .NET reaps its children with
    // waitpid, which would swallow the ptrace stops Hotwire waits for.
    private static int StartDemo(string program, out string readyFile)
    {
        readyFile = Path.Combine(Path.GetTempPath(), $"hotwire-demo-{Environment.ProcessId}.out");
        var psi = new ProcessStartInfo("/bin/sh", ["-c", "\"$0\" > \"$1\" 2>&1 < /dev/null & echo $!", program, readyFile]) { RedirectStandardOutput = true };
        using Process sh = Process.Start(psi) ?? throw new HotwireException("cannot start /bin/sh");
        int pid = int.Parse(sh.StandardOutput.ReadLine() ?? "0");
        sh.WaitForExit();
        var clock = Stopwatch.StartNew();
        while (clock.ElapsedMilliseconds < 10_000)
        {
            if (File.Exists(readyFile) && File.ReadAllText(readyFile).StartsWith("ready", StringComparison.Ordinal))
            {
                return pid;
            }
            Thread.Sleep(10);
        }
        throw new HotwireException($"the demo program {program} did not start");
    }

    /// <summary>Compiles the embedded demo.c once into the user's cache directory.</summary>
    internal static string BuildDemo()
    {
        using Stream source = typeof(DemoCommand).Assembly.GetManifestResourceStream("demo.c")
            ?? throw new InvalidOperationException("demo.c is not embedded");
        using var reader = new StreamReader(source);
        string text = reader.ReadToEnd();
        string hash = Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..12];
        string cache = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg
            ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        string dir = Path.Combine(cache, "hotwire", $"demo-{hash}");
        string program = Path.Combine(dir, "demo");
        if (File.Exists(program))
        {
            return program;
        }
        Directory.CreateDirectory(dir);
        string sourcePath = Path.Combine(dir, "demo.c");
        File.WriteAllText(sourcePath, text);
        string temp = program + ".tmp";
        var psi = new ProcessStartInfo("gcc") { RedirectStandardError = true };
        foreach (string a in new[] { "-O2", "-g", "-pthread", "-fpatchable-function-entry=5", sourcePath, "-o", temp })
        {
            psi.ArgumentList.Add(a);
        }
        Process gcc;
        try
        {
            gcc = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new HotwireException("gcc is not installed: the demo compiles its target with gcc (apt-get install gcc)");
        }
        string errors = gcc.StandardError.ReadToEnd();
        gcc.WaitForExit();
        if (gcc.ExitCode != 0)
        {
            throw new HotwireException($"gcc failed to build the demo: {errors.Split('\n')[0]}");
        }
        File.Move(temp, program, overwrite: true);
        return program;
    }
}
