using System.Diagnostics;
using Hotwire.Patching;
using Hotwire.Procfs;
using Hotwire.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;

namespace Hotwire.Tests;

/// <summary>Hotwire killed while it traces: the target runs on restored, and keeps no memory of Hotwire's buffers.</summary>
[Collection("engine")]
public class KillTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(false, 20)]
    [InlineData(true, 3)]
    public void SIGKILLed_recordings_leave_no_trace_buffers_resident_in_the_target(bool noDiscard, int kills)
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        long first = 0;
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-kill-{Guid.NewGuid():N}");
        for (int i = 0; i < kills; i++)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (string a in new[] { HotwireCli.DllPath, "record", "--pid", target.Pid.ToString(), "-F", "f", "-o", $"{dir}-{i}" })
            {
                psi.ArgumentList.Add(a);
            }
            if (noDiscard)
            {
                psi.Environment["HOTWIRE_TEST_NO_DEADMAN_DISCARD"] = "1";
            }
            using (Process recording = Process.Start(psi)!)
            {
                string? line = recording.StandardError.ReadLine();          // "recording ..." once the sites are live
                Assert.True(line?.Contains("recording", StringComparison.Ordinal), line);
                Thread.Sleep(300);                                           // the buffers fill (several MB resident)
                recording.Kill();
                recording.WaitForExit();
            }
            EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);    // the dead-man switch ran
            long shmem = RssShmemKb(target.Pid);
            output.WriteLine($"kill {i + 1}: RssShmem {shmem} kB");
            if (i == 0)
            {
                first = shmem;
            }
            Directory.Delete($"{dir}-{i}", recursive: true);
        }
        long last = RssShmemKb(target.Pid);
        if (noDiscard)
        {
            // The test-only switch keeps the dead-man switch from giving the pages back: they stay.
            Assert.True(last - first > (kills - 1) * 1024, $"RssShmem grew only from {first} kB to {last} kB");
            return;
        }
        // Each session's buffers are several MB once filled; what stays is each attach's small
        // header, site table and code (about 50 kB here), never a buffer.
        Assert.True(last - first < (kills - 1) * 128, $"RssShmem grew from {first} kB to {last} kB over {kills - 1} killed sessions");
        Session check = Session.Attach(target.Pid);   // a new attach works, and finds the original code
        check.Detach();
        EngineTests.AssertOriginalBytes(target.Pid, check);
        (long old0, _, _) = target.Counts();
        Thread.Sleep(20);
        Assert.True(target.Counts().Old > old0, "the target's threads still call f");
    }

    private static long RssShmemKb(int pid)
        => long.Parse(ProcStatus.Field($"/proc/{pid}/status", "RssShmem")!.Split(' ')[0]);
}
