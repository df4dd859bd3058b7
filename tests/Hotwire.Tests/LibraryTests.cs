namespace Hotwire.Tests;

/// <summary>Libraries loaded and unloaded after attach (Session.Modules.cs).</summary>
[Collection("engine")]
public class LibraryTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Answer = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_library_loaded_after_attach_is_traced_before_dlopen_returns_and_forgotten_when_unloaded(bool ackBeforeTracing)
    {
        // Teeth: HOTWIRE_TEST_ACK_BEFORE_TRACING lets the thread at the rendezvous go before the
        // library's sites are traced: its constructor's call and the threads' first calls are missed.
        TestSwitches.AckBeforeTracing = ackBeforeTracing;
        try
        {
            using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.DlThreads));
            using Session session = Session.Attach(target.Pid);
            Assert.True(session.FollowsLibraries);
            var counts = new CountingOps();
            session.Register(counts);

            // 4 threads call lib_poly 20,000 times each as soon as dlopen returns; the library's
            // constructor calls lib_add once before that.
            target.WriteLine("load libflav.so lib_poly 20000");
            string? first = target.ReadLine(Answer);
            Assert.StartsWith("loaded ", first);
            output.WriteLine($"libflav.so: {first}; traced {session.LibraryLatencies.LastOrDefault():F2} ms after the rendezvous");
            if (ackBeforeTracing)
            {
                Assert.True(counts.Count("lib_add") < 80_001 || counts.Count("lib_poly") < 80_000,
                    $"every call was counted although the thread went on before tracing (lib_add {counts.Count("lib_add")})");
                return;
            }
            Assert.Equal(80_000UL, counts.Count("lib_poly"));
            Assert.Equal(80_000UL, counts.Count("lib_square"));
            Assert.Equal(80_001UL, counts.Count("lib_add"));

            // dlclose, then another library, most likely at the same address: its calls are its own,
            // none goes to the first library's trampolines.
            target.WriteLine("unload");
            Assert.Equal("unloaded", target.ReadLine(Answer));
            target.WriteLine("load libflav2.so lib2_poly 20000");
            string? second = target.ReadLine(Answer);
            Assert.StartsWith("loaded ", second);
            output.WriteLine($"libflav2.so: {second} (same address: {first!.Split(' ')[1] == second!.Split(' ')[1]})");
            Assert.Equal(80_000UL, counts.Count("lib2_poly"));
            Assert.Equal(80_001UL, counts.Count("lib2_add"));
            Assert.Equal(80_000UL, counts.Count("lib_poly"));
            Assert.Equal(2, session.LibrariesLoaded);
            Assert.Equal(1, session.LibrariesUnloaded);
            Assert.Contains(session.Sites, s => s.Function == "lib_poly" && s.Gone);
            Assert.Equal(0UL, session.RendezvousTimeouts);

            ulong brk = Hotwire.Injection.LinkerRendezvous.Find(target.Pid)!.Value.Brk;
            Assert.Equal(0xe9, ReadByte(target.Pid, brk));   // hooked: a jmp over its `ret`
            session.Detach();
            EngineTests.AssertOriginalBytes(target.Pid, session);
            Assert.Equal(0xc3, ReadByte(target.Pid, brk));
            Assert.Throws<InvalidOperationException>(() => counts.Count("lib_poly"));   // the counters went with the session
            // The program goes on untraced: dlclose and dlopen again after detach.
            target.WriteLine("unload");
            Assert.Equal("unloaded", target.ReadLine(Answer));
            target.WriteLine("load libflav.so lib_poly 10");
            Assert.StartsWith("loaded ", target.ReadLine(Answer));
        }
        finally
        {
            TestSwitches.AckBeforeTracing = false;
        }
    }

    [Fact]
    public void A_thread_that_blocks_every_signal_can_dlopen_while_attached()
    {
        // Worker threads often block every signal, and getaddrinfo dlopens NSS modules: an int3
        // anywhere on that path (the rendezvous, a library's initialiser) would have the kernel
        // kill the process with SIGTRAP. The hooks are jmps.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.DlThreads));
        using Session session = Session.Attach(target.Pid);
        var counts = new CountingOps();
        session.Register(counts);
        target.WriteLine("bload libflav.so lib_poly");
        Assert.StartsWith("loaded ", target.ReadLine(Answer));
        Assert.Equal(1UL, counts.Count("lib_add"));   // its constructor, traced
        target.WriteLine("run 1000");
        Assert.StartsWith("ran ", target.ReadLine(Answer));
        Assert.Equal(4_000UL, counts.Count("lib_poly"));
    }

    [Theory]
    [InlineData("function")]
    [InlineData("function_graph")]
    public async Task A_launched_program_has_the_libraries_it_dlopens_recorded_call_for_call(string tracer)
    {
        // The program loads libflav.so, whose constructor calls lib_add, and calls lib_poly from 4
        // threads at once; unloads it; loads libflav2.so at the same address and calls lib2_poly.
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-dl-{Guid.NewGuid():N}");
        ProcessStartInfo psi = HotwireCli.StartInfo("record", "--tracer", tracer, "-o", dir, "--", TargetBuilder.Get(Flavour.DlThreads));
        psi.RedirectStandardInput = true;
        using Process hotwire = Process.Start(psi)!;
        Task<string> stdout = hotwire.StandardOutput.ReadToEndAsync();
        Task<string> stderr = hotwire.StandardError.ReadToEndAsync();
        hotwire.StandardInput.Write("load libflav.so lib_poly 3000\nunload\nload libflav2.so lib2_poly 2000\n");
        hotwire.StandardInput.Close();
        Assert.True(hotwire.WaitForExit(60_000), "hotwire record did not end with the program");
        string errors = await stderr;
        await stdout;
        Assert.True(hotwire.ExitCode == 0, errors);
        Assert.Contains(" 0 lost", errors);
        Dictionary<string, long> calls = tracer == "function"
            ? ReplayCounts(dir)
            : ReportCounts(dir);
        output.WriteLine(string.Join(", ", calls.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} {kv.Value}")));
        Assert.Equal(12_000, calls["lib_poly"]);
        Assert.Equal(12_000, calls["lib_square"]);
        Assert.Equal(12_001, calls["lib_add"]);
        Assert.Equal(1, calls["lib_init"]);
        Assert.Equal(8_000, calls["lib2_poly"]);
        Assert.Equal(8_001, calls["lib2_add"]);
        Directory.Delete(dir, recursive: true);
    }

    internal static Dictionary<string, long> ReportCounts(string dir) => HotwireCli.Run("report", "-d", dir, "--format", "csv").Lines.Skip(1)
        .Select(l => l.Split(',')).ToDictionary(f => f[6], f => long.Parse(f[2]));

    internal static Dictionary<string, long> ReplayCounts(string dir)
    {
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        return replay.Lines.Where(l => !l.StartsWith('#') && l.Contains(" <-"))
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2])
            .GroupBy(f => f).ToDictionary(g => g.Key, g => (long)g.Count());
    }

    private static int ReadByte(int pid, ulong address)
    {
        using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
        var b = new byte[1];
        Assert.True(memory.TryRead(address, b));
        return b[0];
    }
}
