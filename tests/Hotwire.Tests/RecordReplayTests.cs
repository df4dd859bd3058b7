using System.Text.Json;
using System.Text.RegularExpressions;
using Hotwire.Procfs;
using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>The function tracer end to end: `hotwire record`, `replay`, on targets whose calls are known.</summary>
[Collection("engine")]
public class RecordReplayTests
{
    [Fact]
    public void Replay_shows_exactly_the_calls_each_thread_made_with_callers_and_arguments()
    {
        string dir = TempDir();
        CliResult rec = HotwireCli.Run("record", "--args", "1", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree");
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        Assert.Contains("the program exited with status 0", rec.Stderr);
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        Assert.Contains("# entries-in-buffer/entries-written: 34/34   #lost: 0   #threads: 3", replay.Stdout);

        var byTask = replay.Lines.Where(l => !l.StartsWith('#'))
            .Select(l => (Task: l[..l.LastIndexOf('-', 24)].Trim(), Call: l[(l.IndexOf(": ", StringComparison.Ordinal) + 2)..]))
            .GroupBy(x => x.Task).ToDictionary(g => g.Key, g => g.Select(x => x.Call).ToList());
        for (int k = 0; k < 2; k++)
        {
            var expected = new List<string> { $"worker_main({k})" };
            for (int i = 0; i < 5; i++)
            {
                int x = k * 100 + i;
                expected.Add($"a({x}) <-worker_main");
                expected.Add($"b({x + 1}) <-a");
                expected.Add($"c({x + 2}) <-b");
            }
            Assert.Equal(expected, byTask[$"worker-{k}"].Select(c => c.StartsWith("worker_main", StringComparison.Ordinal) ? c[..c.IndexOf(' ')] : c));
        }
        Assert.Equal(["main(2)", "d(99) <-main"], byTask["prog"].Select(c => c.StartsWith("main(", StringComparison.Ordinal) ? c[..c.IndexOf(' ')] : c));
    }

    [Fact]
    public void A_forked_child_is_recorded_under_its_own_pid_and_never_mixes_with_the_parent()
    {
        string dir = TempDir();
        CliResult rec = HotwireCli.Run("record", "--args", "1", "-F", "d", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "fork");
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        TraceInfo info = TraceData.ReadInfo(dir);
        Dictionary<int, List<RawEvent>> events = TraceData.ReadEvents(dir, info);
        ThreadInfo parent = info.Threads.Single(t => t.Tid == info.Pid);
        ThreadInfo child = info.Threads.Single(t => t.Tid != info.Pid);
        Assert.Equal(child.Tid, child.Pid); // the child's main thread: its own process
        Assert.Equal([4UL, 5UL], events[parent.Tid].Select(e => e.Args[0]));
        Assert.Equal([2UL, 3UL], events[child.Tid].Select(e => e.Args[0]));
    }

    [Fact]
    public void A_launch_script_that_execs_the_program_has_the_program_recorded_from_its_first_instruction()
    {
        // start.sh runs a command, then execs the program: the shell (no sites) is followed to the
        // program's exec, and tracing starts there, main included. A script that never gets to a
        // program with sites says so.
        string dir = TempDir();
        Directory.CreateDirectory(dir + ".scripts");
        string script = Path.Combine(dir + ".scripts", "start.sh");
        File.WriteAllText(script, $"#!/bin/sh\nset -e\n/bin/true\nexec {TargetBuilder.Get(Flavour.Calls)} \"$@\"\n");
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        CliResult rec = HotwireCli.Run("record", "--args", "1", "-o", dir, "--", script, "tree");
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.Contains("# entries-in-buffer/entries-written: 34/34   #lost: 0   #threads: 3", replay.Stdout);
        Assert.Contains(replay.Lines, l => l.Contains(": main(2) <-", StringComparison.Ordinal));

        string plain = Path.Combine(dir + ".scripts", "plain.sh");
        File.WriteAllText(plain, "#!/bin/sh\n/bin/true\n");
        File.SetUnixFileMode(plain, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        AssertError(HotwireCli.Run("record", "-o", TempDir(), "--", plain), 1, $"{plain} ended, and no program it executed had patch sites");
        Directory.Delete(dir + ".scripts", recursive: true);
    }

    [Fact]
    public void A_child_that_outlives_the_launched_program_is_recorded_until_it_exits()
    {
        // calls orphan: main forks and exits at once; the child calls d(0..299), one a millisecond.
        string dir = TempDir();
        CliResult rec = HotwireCli.Run("record", "--args", "1", "-F", "d", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "orphan", "300");
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        Assert.Contains("recording the 1 process forked from it until they exit", rec.Stderr);
        TraceInfo info = TraceData.ReadInfo(dir);
        ThreadInfo child = info.Threads.Single(t => t.Tid != info.Pid);
        Assert.Equal(0UL, info.TotalLost);
        Assert.Equal(Enumerable.Range(0, 300).Select(i => (ulong)i), TraceData.ReadEvents(dir, info)[child.Tid].Select(e => e.Args[0]));
    }

    [Fact]
    public void A_child_still_running_when_the_recording_stops_gets_its_code_back_and_is_named()
    {
        // The child calls d for 20 s; the recording stops after 1: the child's copy of the code,
        // made while d was traced, is restored, and it runs on to the end.
        string dir = TempDir();
        string prog = TargetBuilder.Get(Flavour.Calls);
        // Started, not run: the child holds Hotwire's output pipes open until it exits.
        using Process hotwire = HotwireCli.Start("record", "-F", "d", "-o", dir, "--duration", "1", "--", prog, "orphan", "20000");
        Assert.True(hotwire.WaitForExit(60_000), "hotwire did not stop after its --duration");
        Assert.Equal(0, hotwire.ExitCode);
        string stderr = "";
        while (hotwire.StandardError.ReadLine() is { } line)
        {
            stderr += line + "\n";
            if (line.Contains("still ran traced code", StringComparison.Ordinal))
            {
                break;
            }
        }
        Match restored = Regex.Match(stderr, @"1 process forked from pid \d+ still ran traced code: restored \((\d+)\)");
        Assert.True(restored.Success, stderr);
        int child = int.Parse(restored.Groups[1].Value);
        try
        {
            KillTests.AssertTextEqualsFile(child, prog, "the child after the recording");
            Assert.True(Directory.Exists($"/proc/{child}"), "the child died");
        }
        finally
        {
            Hotwire.Interop.Ptrace.kill(child, 9);
        }
    }

    [Fact]
    public void Live_prints_each_call_as_it_happens_and_records_it_too()
    {
        string dir = TempDir();
        CliResult live = HotwireCli.Run("live", "-F", "[abcd]", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree");
        Assert.True(live.ExitCode == 0, live.Stderr);
        string[] calls = live.Lines.Where(l => !l.StartsWith('#')).ToArray();
        Assert.Equal(31, calls.Length);
        Assert.Equal(10, calls.Count(l => l.EndsWith(": b <-a", StringComparison.Ordinal)));
        Assert.Single(calls, l => l.EndsWith(": d <-main", StringComparison.Ordinal));
        Assert.Equal(31, TraceData.ReadInfo(dir).TotalEvents);
    }

    [Fact]
    public void A_full_disk_stops_tracing_cleanly_keeps_what_was_written_and_says_how_much()
    {
        string mount = Path.Combine(Path.GetTempPath(), $"hotwire-full-{Guid.NewGuid():N}");
        Directory.CreateDirectory(mount);
        var mountCmd = Process.Start("mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", mount])!;
        mountCmd.WaitForExit();
        Assert.True(mountCmd.ExitCode == 0, "mounting a small tmpfs needs root (the test machine runs as root)");
        try
        {
            using var target = new SeedTarget(Flavour.SeedNop5, threads: 1, pauseIterations: 100);
            target.Go();
            string dir = Path.Combine(mount, "data");
            CliResult rec = HotwireCli.Run("record", "--pid", target.Pid.ToString(), "-F", "f", "-o", dir, "--duration", "10");
            Assert.True(rec.ExitCode == 1, rec.Stderr);
            Assert.Matches(@"writing .* failed \(.*\): tracing was stopped; the \d+ bytes written before are kept", rec.Stderr);
            (long old, _, long calls) = target.Stop();
            Assert.Equal(calls, old); // the target ran on, unharmed, its code restored
            Assert.True(new FileInfo(Path.Combine(dir, "events.bin")).Length > 0);
            CliResult replay = HotwireCli.Run("replay", "-d", dir);
            Assert.Equal(0, replay.ExitCode); // what was kept replays
            Assert.Contains(": f <-worker", replay.Stdout);
        }
        finally
        {
            Process.Start("umount", [mount])!.WaitForExit();
        }
    }

    [Fact]
    public void Tid_filters_keep_only_the_chosen_threads()
    {
        string dir = TempDir();
        Assert.Equal(0, HotwireCli.Run("record", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree").ExitCode);
        TraceInfo info = TraceData.ReadInfo(dir);
        int worker = info.Threads.First(t => t.Name == "worker-1").Tid;
        CliResult replay = HotwireCli.Run("replay", "-d", dir, "--tid", worker.ToString());
        string[] calls = replay.Lines.Where(l => !l.StartsWith('#')).ToArray();
        Assert.Equal(16, calls.Length);
        Assert.All(calls, l => Assert.Contains($"worker-1-{worker}", l));
        AssertError(HotwireCli.Run("replay", "-d", dir, "--tid", "abc"), 2, "--tid: 'abc' is not a thread id");
    }

    [Fact]
    public void Replay_as_json_is_valid_and_carries_the_same_events()
    {
        string dir = TempDir();
        Assert.Equal(0, HotwireCli.Run("record", "-o", dir, "-F", "a", "-F", "d", "--", TargetBuilder.Get(Flavour.Calls), "tree").ExitCode);
        CliResult json = HotwireCli.Run("replay", "-d", dir, "--format", "json");
        using JsonDocument doc = JsonDocument.Parse(json.Stdout);
        var events = doc.RootElement.GetProperty("events").EnumerateArray().ToList();
        Assert.Equal(11, events.Count); // 2 threads × 5 calls of a, and d once
        Assert.Equal(10, events.Count(e => e.GetProperty("function").GetString() == "a"));
        Assert.Equal("main", events.Single(e => e.GetProperty("function").GetString() == "d").GetProperty("caller").GetString());
        Assert.True(events.Zip(events.Skip(1)).All(p => p.First.GetProperty("timestampNs").GetInt64() <= p.Second.GetProperty("timestampNs").GetInt64()));
    }

    [Fact]
    public void Lost_events_with_a_tiny_buffer_equal_calls_made_minus_events_recorded()
    {
        string dir = TempDir();
        const int Calls = 5_000_000;   // ~50 ms: the recorder drains the buffer between losses, and the marks show where
        CliResult rec = HotwireCli.Run("record", "--buffer-size", "4K", "-F", "leaf", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "burst", Calls.ToString());
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        TraceInfo info = TraceData.ReadInfo(dir);
        Assert.True(info.TotalLost > 0, "the buffer never filled: the test does not exercise loss");
        Assert.Equal((ulong)Calls, (ulong)info.TotalEvents + info.TotalLost);
        Assert.Contains($"{info.TotalLost} lost", rec.Stderr);
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.Contains($"#lost: {info.TotalLost}", replay.Stdout);
        // Where the buffer was full, as ftrace marks it: "[LOST N EVENTS]" before the next event recorded.
        var marks = replay.Lines.Select(l => System.Text.RegularExpressions.Regex.Match(l, @"^\s*\S+\s+\[LOST (\d+) EVENTS\]$")).Where(m => m.Success).ToList();
        Assert.NotEmpty(marks);
        Assert.InRange(marks.Sum(m => long.Parse(m.Groups[1].Value)), 1, (long)info.TotalLost); // the rest were lost after the last event
        string[] calls = replay.Lines.Where(l => !l.StartsWith('#') && !l.EndsWith(" EVENTS]")).ToArray();
        Assert.Equal(info.TotalEvents, calls.Length);
        Assert.All(calls, l => Assert.Contains(": leaf <-", l));
    }

    [Fact]
    public void A_signal_handler_that_interrupts_the_tracers_own_write_never_corrupts_an_event()
    {
        string dir = TempDir();
        CliResult rec = HotwireCli.Run("record", "--args", "1", "-F", "leaf", "-F", "in_signal", "--buffer-size", "64M", "-o", dir,
            "--", TargetBuilder.Get(Flavour.Graph), "sigstress", "3000000");
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        TraceInfo info = TraceData.ReadInfo(dir);
        List<RawEvent> events = TraceData.ReadEvents(dir, info)[info.Pid];
        int leaf = info.Sites.Single(s => s.Function == "leaf").Index, inSignal = info.Sites.Single(s => s.Function == "in_signal").Index;
        Assert.All(events, e => Assert.True(e.Tsc != 0 && (e.Site == leaf || e.Site == inSignal), $"a damaged event: tsc {e.Tsc}, site {e.Site}"));
        for (int i = 1; i < events.Count; i++)
        {
            Assert.True(events[i].Tsc >= events[i - 1].Tsc, $"event {i} goes back in time");
        }
        var args = events.Where(e => e.Site == leaf).Select(e => (long)e.Args[0]).ToList();
        Assert.True(args.SequenceEqual(Enumerable.Range(0, args.Count).Select(i => (long)i)), "leaf(i) recorded once each, in order");
        Assert.Equal(3_000_000, args.Count);                            // the outer call is never the one dropped
        Assert.True(events.Count(e => e.Site == inSignal) > 100, "signals arrived");
    }

    [Fact]
    public void After_detach_the_buffers_no_longer_take_the_targets_memory()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 4);
        target.Go();
        long Shmem() => long.Parse(File.ReadAllLines($"/proc/{target.Pid}/status").Single(l => l.StartsWith("RssShmem:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        CliResult rec = HotwireCli.Run("record", "-F", "f", "-d", "1", "-o", TempDir(), "--pid", target.Pid.ToString());
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        // Four threads filled four 4 MiB buffers; after detach those pages are given back.
        Assert.True(Shmem() < 4096, $"RssShmem {Shmem()} kB after detach");
        (long old, _, _) = target.Counts();
        Assert.True(old > 0);
    }

    [Fact]
    public void No_call_is_missing_from_any_thread_while_another_ops_is_toggled_10000_times()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 4, pauseIterations: 20_000); // few enough calls that the buffers hold them all even if the recorder gets no CPU
        string dir = TempDir();
        var buffers = new TraceBufferOptions(BufferBytes: 16 << 20, MaxThreads: 16, Args: 1);
        using Session session = Session.Attach(target.Pid, new SessionOptions { ExtraSharedBytes = TraceBufferOptions.SharedBytes(buffers) });
        var tracer = new FunctionTracer(buffers, ["f"]);
        using var recorder = new Recorder(session, tracer, dir);
        recorder.NoteTracedSites(session.Register(tracer));
        recorder.Start();
        target.Go();
        var toggled = new CountingOps(["f"]);
        for (int i = 0; i < 10_000; i++)
        {
            session.Register(toggled);
            session.Unregister(toggled);
        }
        session.Unregister(tracer);
        RecordSummary summary = recorder.Finish("seedcase");
        Assert.Equal(0UL, summary.Lost);
        Assert.True(session.TrapsEmulated > 0);
        session.Detach();
        target.Stop();

        TraceInfo info = TraceData.ReadInfo(dir);
        Dictionary<int, List<RawEvent>> events = TraceData.ReadEvents(dir, info);
        Assert.Equal(4, events.Count);
        foreach ((int tid, List<RawEvent> list) in events)
        {
            Assert.True(list.Count > 100, $"thread {tid} recorded only {list.Count} calls");
            for (int i = 1; i < list.Count; i++)
            {
                Assert.True(list[i].Args[0] == list[i - 1].Args[0] + 1, $"thread {tid}: f({list[i - 1].Args[0]}) then f({list[i].Args[0]})");
            }
        }
    }

    [Fact]
    public void Ctrl_C_during_record_of_a_running_process_restores_it_and_keeps_the_data()
    {
        using var target = new SeedTarget(Flavour.SeedSled, threads: 2, pauseIterations: 20_000);
        target.Go();
        string dir = TempDir();
        using Process hotwire = HotwireCli.Start("record", "--pid", target.Pid.ToString(), "-o", dir);
        Assert.StartsWith("hotwire: recording", hotwire.StandardError.ReadLine());
        Thread.Sleep(300);
        Assert.Equal(0, Kill(hotwire.Id, 2)); // SIGINT, as Ctrl-C
        string rest = hotwire.StandardError.ReadToEnd();
        hotwire.WaitForExit();
        Assert.Equal(0, hotwire.ExitCode);
        Assert.Contains("runs on with its original code", rest);
        ProcessImage image = ProcessImage.Load(target.Pid);
        using (var memory = Hotwire.Memory.ProcessMemory.Open(target.Pid))
        {
            foreach (PatchSite s in image.AllSites)
            {
                var now = new byte[s.OriginalBytes.Length];
                Assert.True(memory.TryRead(s.Address, now));
                Assert.Equal(s.OriginalBytes, now);
            }
        }
        (long old, _, long calls) = target.Stop();
        Assert.Equal(calls, old);
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.Equal(0, replay.ExitCode);
        Assert.Contains(": f <-worker", replay.Stdout);
    }

    [Fact]
    public void Bad_record_and_replay_input_gets_one_clear_line()
    {
        AssertError(HotwireCli.Run("record"), 2, "say what to trace");
        AssertError(HotwireCli.Run("record", "--", "/no/such/prog"), 1, "/no/such/prog: program not found");
        AssertError(HotwireCli.Run("record", "-F", "mian", "-o", TempDir(), "--", TargetBuilder.Get(Flavour.Calls), "tree"), 1, "no traceable function matches 'mian'; near names: main");
        AssertError(HotwireCli.Run("record", "--buffer-size", "3K", "--", TargetBuilder.Get(Flavour.Calls)), 2, "--buffer-size must be a power of two");
        AssertError(HotwireCli.Run("record", "-o", "/proc/hotwire-cannot-write", "--", TargetBuilder.Get(Flavour.Calls), "tree"), 1, "cannot write the recording to /proc/hotwire-cannot-write");
        AssertError(HotwireCli.Run("replay", "-d", "/no/such/dir"), 1, "/no/such/dir: no such data directory");

        string dir = TempDir();
        Assert.Equal(0, HotwireCli.Run("record", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree").ExitCode);
        string info = File.ReadAllText(Path.Combine(dir, "info.json"));
        File.WriteAllText(Path.Combine(dir, "info.json"), System.Text.RegularExpressions.Regex.Replace(info, "\"version\":\\d+", "\"version\":99"));
        AssertError(HotwireCli.Run("replay", "-d", dir), 1, "written by a newer Hotwire (format version 99");
        File.WriteAllText(Path.Combine(dir, "info.json"), info);
        byte[] events = File.ReadAllBytes(Path.Combine(dir, "events.bin"));
        File.WriteAllBytes(Path.Combine(dir, "events.bin"), events[..(events.Length - 5)]);
        CliResult cut = HotwireCli.Run("replay", "-d", dir);
        Assert.Equal(0, cut.ExitCode);
        Assert.Contains("events.bin is cut short at byte", cut.Stderr);
        Assert.Equal(33, cut.Lines.Count(l => !l.StartsWith('#'))); // the complete events before the cut
        File.WriteAllBytes(Path.Combine(dir, "events.bin"), [.. events[..16].Select(b => (byte)~b), .. events[16..]]);
        AssertError(HotwireCli.Run("replay", "-d", dir), 1, "is damaged at byte 0");
        File.WriteAllText(Path.Combine(dir, "info.json"), "{ not json");
        AssertError(HotwireCli.Run("replay", "-d", dir), 1, "info.json is damaged");
    }

    private static void AssertError(CliResult r, int code, string text)
    {
        Assert.Equal(code, r.ExitCode);
        string[] lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, r.Stderr);
        Assert.Contains(text, lines[0]);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int sig);

    private static string TempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-test-{Guid.NewGuid():N}");
        return dir;
    }
}
