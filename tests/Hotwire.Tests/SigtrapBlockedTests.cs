namespace Hotwire.Tests;

/// <summary>Threads that block SIGTRAP, running a site while a batch has its int3 there.</summary>
[Collection("engine")]
public class SigtrapBlockedTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Threads_that_block_every_signal_survive_tracing_switched_on_and_off_under_them(bool noGuard)
    {
        // Two workers block every signal and call f in a tight loop: an int3 of a batch on f is
        // hit at once, and the kernel kills a thread that blocks the SIGTRAP it raises. Hotwire
        // holds such threads for each batch. Teeth: HOTWIRE_TEST_NO_SIGTRAP_GUARD.
        TestSwitches.NoSigtrapGuard = noGuard;
        try
        {
            using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.SigBlocked));
            var counts = new CountingOps(["f"]);
            int toggles = 0;
            ulong counted = 0;
            try
            {
                using Session session = Session.Attach(target.Pid);
                for (; toggles < 100; toggles++)
                {
                    session.Register(counts);
                    session.Unregister(counts);
                }
                counted = counts.Count("f");
                session.Detach();
            }
            catch (Exception e) when (noGuard && e is HotwireException)
            {
                output.WriteLine($"without the guard: {e.Message}");
            }
            Thread.Sleep(100);
            bool alive = Directory.Exists($"/proc/{target.Pid}") && !File.ReadAllText($"/proc/{target.Pid}/stat").Contains(") Z", StringComparison.Ordinal);
            output.WriteLine($"{toggles} toggles; target alive: {alive}");
            if (noGuard)
            {
                Assert.False(alive, "the target survived int3s under threads that block SIGTRAP: the test has no teeth");
                return;
            }
            Assert.True(alive, "the target died");
            Assert.True(counted > 0, "f was never counted");
            long before = Calls(target);
            Thread.Sleep(20);
            Assert.True(Calls(target) > before, "the workers no longer call f");
        }
        finally
        {
            TestSwitches.NoSigtrapGuard = false;
        }
    }

    private static long Calls(TargetProcess target)
    {
        target.WriteLine("counts");
        string? line = target.ReadLine(TimeSpan.FromSeconds(10));
        Assert.StartsWith("f ", line);
        return long.Parse(line![2..]);
    }
}
