using System.CommandLine;
using Hotwire.Patching;
using Hotwire.Procfs;

namespace Hotwire.Cli.Commands;

/// <summary>The options every tracing command shares: which process, which functions.</summary>
public sealed class TargetOptions
{
    public Option<int?> Pid { get; } = new("--pid", "-p") { Description = "Attach to this running process", CustomParser = OptionValues.ProcessId };

    public Option<string[]> Filter { get; } = new("--filter", "-F")
    {
        Description = "Only functions matching GLOB (repeatable; ftrace filter syntax: *, ?, [...], !GLOB, GLOB:mod:MODULE)",
        AllowMultipleArgumentsPerToken = false,
    };

    public Option<string[]> Notrace { get; } = new("--notrace", "-N") { Description = "Never functions matching GLOB (repeatable; wins over --filter)" };

    public Option<bool> Relocate { get; } = new("--relocate")
    {
        Description = "Also trace functions without a compiler site (any binary, libc included) by relocating their first instructions into a detour (docs/any-binary.md)",
    };

    public Option<string> Int3 { get; } = new("--int3")
    {
        Description = "Breakpoint handling while sites are rewritten: emulate (default) or skip (test-only: the pre-2019 bug)",
        DefaultValueFactory = _ => "emulate",
        Hidden = true,
    };

    public Argument<string[]> Command { get; } = new("-- PROGRAM [ARGS]")
    {
        Description = "Program to start and trace (after --)",
        Arity = ArgumentArity.ZeroOrMore,
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Pid);
        command.Options.Add(Filter);
        command.Options.Add(Notrace);
        command.Options.Add(Relocate);
        command.Options.Add(Int3);
        command.Arguments.Add(Command);
    }

    /// <summary>
    /// Attaches to --pid or launches the program after --, as the user asked, once the process is
    /// known to have functions that <paramref name="ops"/>' filters choose, unless Ctrl-C or
    /// SIGTERM came first (then it detaches at once, or kills the program it started).
    /// </summary>
    public Session Open(ParseResult result, Ops ops, StopSignals stop, ulong extraSharedBytes = 0, Action<Session>? beforeRun = null, ulong extraSharedBytesPerSite = 0)
    {
        int? pid = result.GetValue(Pid);
        string[] program = result.GetValue(Command) ?? [];
        string int3 = result.GetValue(Int3) ?? "emulate";
        if (int3 is not ("emulate" or "skip"))
        {
            throw new UsageException($"--int3 takes emulate or skip, not '{int3}'");
        }
        var options = new SessionOptions
        {
            SkipInt3Emulation = int3 == "skip", ExtraSharedBytes = extraSharedBytes, ExtraSharedBytesPerSite = extraSharedBytesPerSite,
            Notice = message => Console.Error.WriteLine($"hotwire: {message}"),
            RelocateEntries = result.GetValue(Relocate),
            StopRequested = () => stop.Signaled,
        };
        if (pid is not null && program.Length > 0)
        {
            throw new UsageException("give either --pid N or -- PROGRAM, not both");
        }
        if (pid is int p)
        {
            // Read-only first: filters that match nothing leave the process untouched.
            ProcessImage image = ProcessImage.Load(p);
            // (With --relocate the filter may choose functions found only once attached: the session checks.)
            if (image.AllSites.Any() && !options.RelocateEntries)
            {
                ops.SelectSites(image.AllSites.ToList());
            }
            PauseBeforeAttachForTests(stop);
            if (stop.Signaled)
            {
                throw new InterruptedException($"interrupted before attaching: pid {p} was not touched");
            }
            Session attached = Session.Attach(p, options, image);
            if (attached.NotReusedBecause is { } why)
            {
                Console.Error.WriteLine($"hotwire: pid {p} keeps an earlier Hotwire block that could not be reused ({why}): this session adds another");
            }
            try
            {
                if (stop.Signaled)
                {
                    throw new InterruptedException($"interrupted while attaching: detached at once, nothing traced; pid {p} runs on with its original code");
                }
                beforeRun?.Invoke(attached);
            }
            catch
            {
                attached.Dispose();
                throw;
            }
            ForkGuard.Start(attached);
            return attached;
        }
        if (program.Length == 0)
        {
            throw new UsageException("say what to trace: --pid N for a running process, or -- PROGRAM [ARGS] to start one");
        }
        PauseBeforeAttachForTests(stop);
        if (stop.Signaled)
        {
            throw new InterruptedException($"interrupted before starting {program[0]}");
        }
        Session launched = Session.Launch(program[0], program[1..], options, beforeRun: s =>
        {
            if (stop.Signaled)
            {
                throw new InterruptedException($"interrupted while starting {program[0]}: it was killed before it ran");
            }
            if (!options.RelocateEntries)
            {
                ops.SelectSites(s.Image.AllSites.ToList()); // before the recording or counters are made (with --relocate, Register checks)
            }
            beforeRun?.Invoke(s);
        });
        ForkGuard.Start(launched);
        return launched;
    }

    // Test-only: a window in which a test's SIGINT arrives before attach, deterministically.
    private static void PauseBeforeAttachForTests(StopSignals stop)
    {
        if (Environment.GetEnvironmentVariable("HOTWIRE_TEST_PAUSE_BEFORE_ATTACH_MS") is { } text && int.TryParse(text, out int ms))
        {
            Console.Error.WriteLine($"hotwire: test: pausing {ms} ms before attaching");
            stop.Token.WaitHandle.WaitOne(ms);
        }
    }

    /// <summary>The command line the target runs, for the recording's header.</summary>
    public string Describe(ParseResult result)
    {
        if (result.GetValue(Pid) is int pid)
        {
            try
            {
                return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim();
            }
            catch (IOException)
            {
                return $"pid {pid}";
            }
        }
        return string.Join(' ', result.GetValue(Command) ?? []);
    }

    /// <summary>With --pid, refuses thread ids the process does not have (for a launched program they cannot be known yet).</summary>
    public void CheckThreads(ParseResult result, IReadOnlySet<int>? tids)
    {
        if (tids is null || result.GetValue(Pid) is not int pid || !Directory.Exists($"/proc/{pid}/task"))
        {
            return;
        }
        foreach (int tid in tids.Order())
        {
            if (!Directory.Exists($"/proc/{pid}/task/{tid}"))
            {
                throw new HotwireException($"--tid {tid}: pid {pid} has no thread {tid} (its threads are the entries of /proc/{pid}/task)");
            }
        }
    }

    public IEnumerable<string> Filters(ParseResult result) => result.GetValue(Filter) ?? [];

    public IEnumerable<string> Notraces(ParseResult result) => result.GetValue(Notrace) ?? [];
}
