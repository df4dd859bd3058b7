using Hotwire.Elf;

namespace Hotwire.Tests;

/// <summary>
/// Functions without a compiler site, traced in a running process through relocated entries
/// (SessionOptions.RelocateEntries): in the program and in libc, while 4 threads call them.
/// </summary>
[Collection("engine")]
public class RelocatedEntryTests(ITestOutputHelper output)
{
    private static long Run(TargetProcess target, long calls)
    {
        target.WriteLine($"run {calls}");
        string? line = target.ReadLine(TimeSpan.FromSeconds(60));
        Assert.NotNull(line);
        Assert.StartsWith("done ", line, StringComparison.Ordinal);
        return long.Parse(line["done ".Length..]);
    }

    private static byte[] Live(int pid, ulong address, int length)
    {
        using var mem = new FileStream($"/proc/{pid}/mem", FileMode.Open, FileAccess.Read);
        mem.Seek((long)address, SeekOrigin.Begin);
        byte[] b = new byte[length];
        mem.ReadExactly(b);
        return b;
    }

    [Fact]
    public void Every_call_of_a_function_without_a_site_is_counted_in_the_program_and_in_libc_and_detach_restores_it()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        long expected = Run(target, 1000); // untraced: the sum to compare with
        const long Calls = 50_000;
        long untraced = Run(target, Calls);

        using Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true });
        var work = new CountingOps(["work"], name: "work");
        var malloc = new CountingOps(["malloc:mod:libc.so.6"], name: "malloc");
        SiteRecord site = Assert.Single(session.Register(work));
        Assert.Equal(SiteKind.Relocated, site.Site.Kind);
        SiteRecord mallocSite = Assert.Single(session.Register(malloc));
        byte[] original = site.Site.OriginalBytes;
        Assert.NotEqual(original, Live(target.Pid, site.Address, 5)); // a jmp now

        Assert.Equal(untraced, Run(target, Calls));           // the program's results are unchanged
        Assert.Equal((ulong)(4 * Calls), work.Count("work"));          // every call, once
        Assert.Equal((ulong)(4 * Calls), malloc.Count("malloc"));

        // Off and on again: the original bytes, then the jmp.
        session.Unregister(work);
        Assert.Equal(original, Live(target.Pid, site.Address, 5));
        Assert.Equal(untraced, Run(target, Calls));
        session.Register(work);
        Assert.Equal(untraced, Run(target, Calls));
        Assert.Equal((ulong)(2 * 4 * Calls), work.Count("work"));     // its counters carry on from the first time

        session.Detach();
        Assert.Equal(original, Live(target.Pid, site.Address, 5));
        Assert.Equal(mallocSite.Site.OriginalBytes, Live(target.Pid, mallocSite.Address, 5));
        Assert.Equal(expected, Run(target, 1000));
    }

    [Fact]
    public void Count_relocate_counts_a_program_function_and_malloc_exactly_and_ctrl_c_restores_them()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        (ulong work, ulong malloc) = (Entry(target.Pid, prog, "work"), Entry(target.Pid, "/usr/lib/x86_64-linux-gnu/libc.so.6", "malloc"));
        byte[] workBytes = Live(target.Pid, work, 5), mallocBytes = Live(target.Pid, malloc, 5);
        using Process hotwire = HotwireCli.Start("count", "--relocate", "--pid", target.Pid.ToString(), "-F", "work", "-F", "malloc:mod:libc.so.6");
        Assert.Equal($"hotwire: counting calls of 2 functions in pid {target.Pid}; Ctrl-C to stop", hotwire.StandardError.ReadLine());
        Run(target, 25_000);
        Hotwire.Interop.Ptrace.kill(hotwire.Id, 2); // SIGINT
        string output = hotwire.StandardOutput.ReadToEnd();
        hotwire.WaitForExit();
        Assert.Equal(0, hotwire.ExitCode);
        var counts = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith('#'))
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToDictionary(f => f[1], f => long.Parse(f[0]));
        Assert.Equal(100_000, counts["work"]);
        Assert.Equal(100_000, counts["malloc"]);
        Assert.Equal(workBytes, Live(target.Pid, work, 5));
        Assert.Equal(mallocBytes, Live(target.Pid, malloc, 5));
    }

    [Fact]
    public void Function_graph_of_malloc_records_every_call_with_a_plausible_duration_and_results_stay_the_same()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        long untraced = Run(target, 25_000);
        string dir = Path.Combine(Path.GetTempPath(), $"malloc-graph-{Environment.ProcessId}");
        using Process hotwire = HotwireCli.Start("record", "--relocate", "--tracer", "function_graph", "--pid", target.Pid.ToString(),
            "-F", "malloc:mod:libc.so.6", "-o", dir, "--force");
        Assert.StartsWith("hotwire: recording 1 functions", hotwire.StandardError.ReadLine());
        Assert.Equal(untraced, Run(target, 25_000));
        Hotwire.Interop.Ptrace.kill(hotwire.Id, 2); // SIGINT
        string summary = hotwire.StandardError.ReadToEnd();
        hotwire.WaitForExit();
        Assert.True(hotwire.ExitCode == 0, summary);
        Assert.Contains(" 0 lost", summary, StringComparison.Ordinal);
        CliResult report = HotwireCli.Run("report", "-d", dir);
        Assert.Equal(0, report.ExitCode);
        // "  Total   Self   Calls   Avg total   Min total   Max total  Function": the malloc line
        string line = Assert.Single(report.Lines, l => l.EndsWith(" malloc", StringComparison.Ordinal));
        string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        int calls = Array.FindIndex(f, w => long.TryParse(w, out _) && !w.Contains('.'));
        Assert.Equal("100000", f[calls]);
        double avg = double.Parse(f[calls + 1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal("us", f[calls + 2]); // an average malloc of microseconds, not seconds or nothing
        Assert.InRange(avg, 0.001, 50.0);
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void A_program_without_sites_is_counted_from_its_first_instruction_with_relocate()
    {
        string prog = Path.Combine(Path.GetDirectoryName(TargetBuilder.Get(Flavour.Prologues))!, "prog");
        CliResult plain = HotwireCli.Run("count", "-F", "add3", "--", prog, "5");
        Assert.Equal(1, plain.ExitCode);
        Assert.Contains("has no patch sites", plain.Stderr, StringComparison.Ordinal);
        Assert.Contains("--relocate", plain.Stderr, StringComparison.Ordinal);

        CliResult result = HotwireCli.Run("count", "--relocate", "-F", "add3", "-F", "rip_first", "-F", "call_last", "--", prog, "5");
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Contains("the program exited with status 0", result.Stderr, StringComparison.Ordinal);
        var counts = result.Lines.Where(l => !l.StartsWith('#')).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToDictionary(f => f[1], f => long.Parse(f[0]));
        Assert.Equal((1, 1, 1), (counts["add3"], counts["rip_first"], counts["call_last"]));
    }

    [Theory]
    [InlineData("function_graph")]
    [InlineData("profile")]
    public void Every_function_of_a_program_without_sites_is_recorded_from_its_first_instruction_and_start_is_left_alone(string tracer)
    {
        // _start is the ELF entry point: the kernel jumps to it with argc on top of the stack, not a
        // return address. A tracer that takes over the return slot there broke every such launch
        // (found on python3.11); it is refused, with its reason, and everything else is traced.
        // A static program cannot be launched so (its own start-up code runs before TLS exists).
        string prog = Path.Combine(Path.GetDirectoryName(TargetBuilder.Get(Flavour.Prologues))!, "prog");
        CliResult ls = HotwireCli.Run("ls", "--all", prog, "_start");
        Assert.Contains($"_start [prog] refused: {EntryClassifier.EntryPointReason}", ls.Stdout, StringComparison.Ordinal);
        CliResult untraced = RunProgram(prog, "5");
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-start-{Guid.NewGuid():N}");
        try
        {
            // Every module: the program, libc (its start-up and exit code included); the dynamic
            // linker is left alone at launch (it runs before thread-local storage exists).
            CliResult result = HotwireCli.Run("record", "--relocate", "--tracer", tracer, "-F", "*", "-o", dir, "--", prog, "5");
            Assert.True(result.ExitCode == 0, result.Stderr);
            Assert.Contains("the program exited with status 0", result.Stderr, StringComparison.Ordinal);
            Assert.Equal(untraced.Stdout, result.Stdout);
            CliResult report = HotwireCli.Run("report", "-d", dir, "--format", "csv");
            Assert.True(report.ExitCode == 0, report.Stderr);
            Assert.Contains(",add3,", report.Stdout, StringComparison.Ordinal);
            Assert.Contains(",main,", report.Stdout, StringComparison.Ordinal);
            Assert.Contains(",libc.so.6", report.Stdout, StringComparison.Ordinal);
        }
        finally
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, true);
            }
        }
    }

    [Fact]
    public void A_static_program_is_not_launched_with_relocate_and_says_why()
    {
        CliResult result = HotwireCli.Run("record", "--relocate", "-F", "*", "-o", Path.Combine(Path.GetTempPath(), $"hotwire-static-{Guid.NewGuid():N}"),
            "--", TargetBuilder.Get(Flavour.StaticPlain));
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("is statically linked", result.Stderr, StringComparison.Ordinal);
        Assert.Contains("--pid", result.Stderr, StringComparison.Ordinal);
        Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    private static CliResult RunProgram(string path, params string[] args)
    {
        var info = new ProcessStartInfo(path) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }
        using Process p = Process.Start(info)!;
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        return new CliResult(p.ExitCode, stdout, stderr);
    }

    [Fact]
    public void A_library_without_sites_dlopened_while_attached_is_traced_at_relocated_entries_and_forgotten_when_unloaded()
    {
        // No site anywhere. 4 threads call lib_poly 20,000 times each as soon as dlopen returns; the
        // library's constructor calls lib_add once before that. Its entries are relocated at the
        // linker's consistent point, before any of its code runs.
        string exe = TargetBuilder.Get(Flavour.DlThreadsPlain);
        using TargetProcess target = TargetProcess.Start(exe);
        using Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true });
        var counts = new CountingOps(["*"]);   // every function of every module (libc too), and of those that come
        session.Register(counts);
        target.WriteLine("load libflav.so lib_poly 20000");
        Assert.StartsWith("loaded ", target.ReadLine(TimeSpan.FromSeconds(30)));
        Assert.Equal(80_000UL, counts.Count("lib_poly"));
        Assert.Equal(80_000UL, counts.Count("lib_square"));
        Assert.Equal(80_001UL, counts.Count("lib_add"));
        Assert.All(session.Sites.Where(s => s.Function.StartsWith("lib_", StringComparison.Ordinal)), s => Assert.Equal(SiteKind.Relocated, s.Site.Kind));

        // dlclose: its entries are forgotten (nothing is written to unmapped code), and the next library's are its own.
        target.WriteLine("unload");
        Assert.Equal("unloaded", target.ReadLine(TimeSpan.FromSeconds(30)));
        Assert.Contains(session.Sites, s => s.Function == "lib_poly" && s.Gone);
        target.WriteLine("load libflav2.so lib2_poly 20000");
        Assert.StartsWith("loaded ", target.ReadLine(TimeSpan.FromSeconds(30)));
        Assert.Equal(80_000UL, counts.Count("lib2_poly"));
        Assert.Equal(80_001UL, counts.Count("lib2_add"));
        Assert.Equal(80_000UL, counts.Count("lib_poly"));
        session.Unregister(counts);
        session.Detach();
        EngineTests.AssertOriginalBytes(target.Pid, session);
        KillTests.AssertTextEqualsFile(target.Pid, Path.Combine(Path.GetDirectoryName(exe)!, "libflav2.so"), "libflav2.so after detach");
        KillTests.AssertTextEqualsFile(target.Pid, exe, "the program after detach");
    }

    [Fact]
    public void SIGKILL_of_hotwire_leaves_relocated_entries_restored_by_the_dead_man_switch()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        long expected = Run(target, 2000);
        ulong work = Entry(target.Pid, prog, "work");
        byte[] original = Live(target.Pid, work, 5);
        using Process hotwire = HotwireCli.Start("count", "--relocate", "--pid", target.Pid.ToString(), "-F", "work", "-F", "malloc:mod:libc.so.6");
        hotwire.StandardError.ReadLine();
        Assert.NotEqual(original, Live(target.Pid, work, 5));
        hotwire.Kill();
        hotwire.WaitForExit();
        var deadline = Stopwatch.StartNew();
        while (!Live(target.Pid, work, 5).AsSpan().SequenceEqual(original) && deadline.ElapsedMilliseconds < 5000)
        {
            Thread.Sleep(20);
        }
        Assert.Equal(original, Live(target.Pid, work, 5));
        Assert.Equal(expected, Run(target, 2000));
    }

    [Fact]
    public void A_filter_that_chooses_only_a_function_that_cannot_be_relocated_says_why()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Unmodified));
        CliResult result = HotwireCli.Run("count", "--relocate", "--pid", target.Pid.ToString(), "-F", "tiny", "--duration", "1");
        Assert.Equal(1, result.ExitCode);
        Assert.Equal(
            $"hotwire: the function the filter matches cannot be traced: it has no compiler site and its entry cannot be relocated (tiny [prog]: {EntryClassifier.TooShort}); `hotwire ls --all` lists every function and why",
            result.Stderr.Trim());
        long sum = Run(target, 10);
        Assert.Equal(sum, Run(target, 10)); // the target runs on, unchanged
    }

    /// <summary>The runtime address of a function's relocated bytes (past endbr64) in <paramref name="file"/> as mapped in pid.</summary>
    private static ulong Entry(int pid, string file, string function)
    {
        var image = Hotwire.Procfs.ProcessImage.Load(pid);
        var module = image.Modules.Single(m => m.Path == file || Path.GetFileName(m.Path) == Path.GetFileName(file));
        var catalog = Hotwire.Symbols.FunctionCatalog.Of(module.Elf, module.Path);
        var f = catalog.Functions.First(x => x.Name == function);
        byte[] body = new byte[f.Size];
        Assert.True(module.Elf.TryReadVirtual(f.Address, body));
        return EntryClassifier.Classify(body, f.Address, []).Patch + module.Bias;
    }

    [Fact]
    public void Ten_thousand_toggles_of_a_relocated_entry_make_no_blocked_call_fail_with_EINTR_or_return_early()
    {
        // Threads blocked in the calls signal(7) says fail with EINTR after a stop, and in poll, read
        // on a pipe, a futex, accept and a 60 s nanosleep (restarted: must never return), two more calling
        // f busily: each enable converts f's original bytes again (int3, the check of every thread, tail, head).
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.WaitersPlain));
        using (Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true }))
        {
            var ops = new CountingOps(["f"]);
            Assert.Equal(SiteKind.Relocated, Assert.Single(session.Register(ops)).Site.Kind);
            session.Unregister(ops);
            long before = KillTests.Counts(target)["f"];
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < 5_000; i++)
            {
                session.Register(ops);
                session.Unregister(ops);
            }
            output.WriteLine($"10,000 toggles in {clock.ElapsedMilliseconds} ms");
            Assert.True(KillTests.Counts(target)["f"] > before, "f was not called while toggling");
            Assert.True(ops.Count("f") > 0);
            session.Detach();
        }
        Dictionary<string, long> counts = KillTests.Counts(target);
        target.WriteLine("quit");
        // The calls that fail with EINTR after a stop, then those the kernel restarts (any return is wrong).
        foreach (string call in new[] { "sigwaitinfo", "sigtimedwait", "semop", "semtimedop", "io_getevents", "recv", "epoll_wait",
            "poll", "read", "futex", "accept", "nanosleep" })
        {
            Assert.True(counts[call] == 0, $"{call}: {counts[call]} EINTR or early returns");
        }
    }

    // ---- parking: a thread at an instruction boundary inside the bytes being rewritten ----

    private static (TargetProcess Target, int Tid, ulong Entry) StartParkReloc()
    {
        TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.ParkReloc));
        return (target, int.Parse(target.ReadyWords[2]), Convert.ToUInt64(target.ReadyWords[3], 16));
    }

    private static string Ask(TargetProcess target, string line)
    {
        target.WriteLine(line);
        return target.ReadLine(TimeSpan.FromSeconds(60)) ?? throw new InvalidOperationException($"no answer to {line}");
    }

    private static bool Dies(TargetProcess target)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.ElapsedMilliseconds < 3000)
        {
            if (!File.Exists($"/proc/{target.Pid}/status") || File.ReadAllText($"/proc/{target.Pid}/status").Contains("State:\tZ", StringComparison.Ordinal))
            {
                return true;
            }
            Thread.Sleep(20);
        }
        return false;
    }

    /// <summary>Parks the thread at entry + 2 with the ptrace helper, then registers; returns whether Register finished while it was parked.</summary>
    private static (bool FinishedWhileParked, byte[] BytesWhileParked, Process Stepper, Task<IReadOnlyList<SiteRecord>> Register) ParkAndRegister(
        Session session, CountingOps ops, int tid, ulong entry)
    {
        string stepperPath = Path.Combine(Path.GetDirectoryName(TargetBuilder.Get(Flavour.ParkReloc))!, "stepper");
        var psi = new ProcessStartInfo(stepperPath, [tid.ToString(), (entry + 2).ToString("x")]) { RedirectStandardInput = true, RedirectStandardOutput = true };
        Process stepper = Process.Start(psi)!;
        Assert.Equal($"parked {entry + 2:x}", stepper.StandardOutput.ReadLine());
        Task<IReadOnlyList<SiteRecord>> register = Task.Run(() => session.Register(ops));
        bool finished = register.Wait(TimeSpan.FromMilliseconds(800));
        return (finished, Live(session.Pid, entry, 5), stepper, register);
    }

    [Fact]
    public async Task A_thread_another_tracer_holds_inside_the_entry_is_waited_for_and_every_call_is_counted()
    {
        (TargetProcess target, int tid, ulong entry) = StartParkReloc();
        using TargetProcess _ = target;
        byte[] original = Live(target.Pid, entry, 5);
        var notices = new List<string>();
        using Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true, Notice = notices.Add });
        var ops = new CountingOps(["reloc_f"]);
        long start = long.Parse(Ask(target, "calls"));
        (bool finished, byte[] parkedBytes, Process stepper, Task<IReadOnlyList<SiteRecord>> register) = ParkAndRegister(session, ops, tid, entry);
        using Process __ = stepper;
        // Not finished: the int3 is in, the tail is not written while the thread sits at +2.
        Assert.False(finished);
        Assert.Equal(0xcc, parkedBytes[0]);
        Assert.Equal(original[1..], parkedBytes[1..]);
        Assert.Contains(notices, n => n.Contains($"thread {tid} ", StringComparison.Ordinal) && n.Contains("held by another tracer", StringComparison.Ordinal));

        stepper.StandardInput.WriteLine("go");
        await stepper.WaitForExitAsync();
        SiteRecord site = Assert.Single(await register.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(SiteKind.Relocated, site.Site.Kind);
        Assert.Equal(0xe9, Live(target.Pid, entry, 1)[0]);

        long before = long.Parse(Ask(target, "calls"));
        Thread.Sleep(300);
        long during = long.Parse(Ask(target, "calls"));
        session.Unregister(ops);
        long after = long.Parse(Ask(target, "calls"));
        ulong counted = ops.Count("reloc_f");
        // Every call made while registered, once: at least those made inside the window, at most those around it.
        Assert.InRange((long)counted, during - before, after - start);
        Assert.True(during > before, "the threads made no progress");
        Assert.Equal("ok", Ask(target, "stop")); // no thread got a wrong value (it would abort)
        session.Detach();
        Assert.Equal(original, Live(target.Pid, entry, 5));
    }

    [Fact]
    public void Ctrl_C_while_waiting_for_a_thread_another_tracer_holds_ends_hotwire_and_the_entry_comes_back()
    {
        (TargetProcess target, int tid, ulong entry) = StartParkReloc();
        using TargetProcess _ = target;
        byte[] original = Live(target.Pid, entry, 5);
        string stepperPath = Path.Combine(Path.GetDirectoryName(TargetBuilder.Get(Flavour.ParkReloc))!, "stepper");
        var psi = new ProcessStartInfo(stepperPath, [tid.ToString(), (entry + 2).ToString("x")]) { RedirectStandardInput = true, RedirectStandardOutput = true };
        using Process stepper = Process.Start(psi)!;
        Assert.Equal($"parked {entry + 2:x}", stepper.StandardOutput.ReadLine());
        using Process counting = HotwireCli.Start("count", "--relocate", "-F", "reloc_f", "--pid", target.Pid.ToString());
        var lines = new List<string>();
        while (counting.StandardError.ReadLine() is { } line)
        {
            lines.Add(line);
            if (line.Contains("held by another tracer", StringComparison.Ordinal))
            {
                break;
            }
        }
        Assert.Contains(lines, l => l.Contains($"thread {tid} ", StringComparison.Ordinal) && l.Contains("Ctrl-C ends Hotwire", StringComparison.Ordinal));
        Assert.Equal(0xcc, Live(target.Pid, entry, 1)[0]);          // waiting: the int3 is in, the tail is not
        Assert.Equal(0, Hotwire.Interop.Ptrace.kill(counting.Id, 2 /* SIGINT */));
        Assert.True(counting.WaitForExit(5000), "Ctrl-C was not answered while Hotwire waited");
        Assert.Equal(130, counting.ExitCode);
        Assert.Contains("interrupted while thread", counting.StandardError.ReadToEnd(), StringComparison.Ordinal);
        var clock = Stopwatch.StartNew();
        while (!Live(target.Pid, entry, 5).SequenceEqual(original) && clock.ElapsedMilliseconds < 3000)
        {
            Thread.Sleep(20);                                         // the agent's dead-man switch
        }
        Assert.Equal(original, Live(target.Pid, entry, 5));
        stepper.StandardInput.WriteLine("go");
        stepper.WaitForExit();
        Assert.Equal("ok", Ask(target, "stop"));                      // the held thread ran on with the right values
    }

    /// <summary>Teeth: with threads Hotwire cannot stop left unwatched, the tail is written under the parked thread, which dies on release.</summary>
    [Fact]
    public void Without_watching_threads_it_cannot_stop_the_parked_thread_runs_into_torn_bytes()
    {
        (TargetProcess target, int tid, ulong entry) = StartParkReloc();
        using TargetProcess owned = target;
        using Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true });
        TestSwitches.SkipUnstoppableThreads = true;
        try
        {
            (bool finished, byte[] parkedBytes, Process stepper, _) = ParkAndRegister(session, new CountingOps(["reloc_f"]), tid, entry);
            using Process ownedStepper = stepper;
            Assert.True(finished);
            Assert.Equal(0xe9, parkedBytes[0]); // the jmp, over the thread's next instruction
            stepper.StandardInput.WriteLine("go");
            stepper.WaitForExit();
            Assert.True(Dies(target), "the thread parked inside the rewritten bytes ran on unharmed");
        }
        finally
        {
            TestSwitches.SkipUnstoppableThreads = false;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_signal_handler_that_interrupted_the_entry_returns_into_the_relocated_copy(bool skipSignalFrames)
    {
        (TargetProcess target, _, ulong entry) = StartParkReloc();
        using TargetProcess owned = target;
        Assert.Equal($"parked {entry + 2:x}", Ask(target, "signal"));
        using Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true, SkipSignalFrameSleds = skipSignalFrames });
        var ops = new CountingOps(["reloc_f"]);
        session.Register(ops);
        Assert.Equal("released", Ask(target, "release"));
        if (skipSignalFrames)
        {
            // Teeth: the saved PC left at +2 returns into the middle of the jmp.
            Assert.True(Dies(target), "the handler returned into the rewritten bytes unharmed");
            return;
        }
        long before = long.Parse(Ask(target, "calls"));
        Thread.Sleep(200);
        Assert.True(long.Parse(Ask(target, "calls")) > before);
        Assert.True(ops.Count("reloc_f") > 0);
        session.Detach();
        Assert.Equal("ok", Ask(target, "stop"));
    }
}
