using System.Net.Sockets;

namespace Hotwire.Tests;

/// <summary>A prefork server traced while it forks workers and a child per connection (issue 15).</summary>
[Collection("engine")]
public class ProcessTreeTests(ITestOutputHelper output)
{
    private const int Clients = 8, ConnectionsPerClient = 25, RequestsPerConnection = 10;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_prefork_server_is_recorded_in_every_process_and_every_process_gets_its_code_back(bool killHotwire)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Prefork));
        string exe = File.ReadAllText($"/proc/{target.Pid}/cmdline").Split('\0')[0];
        int port = int.Parse(target.ReadyWords[2]);
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-prefork-{Guid.NewGuid():N}");
        var idle = new List<(TcpClient Client, StreamReader In, StreamWriter Out)>();
        try
        {
            using Process hotwire = HotwireCli.Start("record", "--pid", target.Pid.ToString(), "-F", "serve", "-o", dir);
            string? first = hotwire.StandardError.ReadLine();
            Assert.True(first is not null && first.Contains("recording", StringComparison.Ordinal), first);
            Task<string> rest = hotwire.StandardError.ReadToEndAsync();
            Task<string> stdout = hotwire.StandardOutput.ReadToEndAsync();

            // The workers are forked while Hotwire is attached; each connection gets a child of its worker.
            target.WriteLine("spawn");
            string? spawned = target.ReadLine(TimeSpan.FromSeconds(10));
            Assert.StartsWith("spawned ", spawned);
            int[] workers = spawned!.Split(' ')[1..].Select(int.Parse).ToArray();
            for (int i = 0; i < 4; i++)
            {
                idle.Add(await Connect(port));
                Assert.Equal("2", await Ask(idle[i], "1"));
            }
            int failed = await Load(port);
            Assert.Equal(0, failed);

            if (killHotwire)
            {
                hotwire.Kill();
            }
            else
            {
                Assert.Equal(0, Kill(hotwire.Id, 2));
            }
            Assert.True(hotwire.WaitForExit(30_000), "hotwire did not end");
            string errors = (first ?? "") + "\n" + await rest;
            await stdout;
            output.WriteLine(errors);
            List<int> tree = [target.Pid, .. workers, .. workers.SelectMany(Children)];
            Assert.True(tree.Count >= 9, $"the tree has {tree.Count} processes: {string.Join(' ', tree)}");
            // Every process of the tree runs the file's code again: the target by its agent (or the
            // detach), the forked ones by the detach or, when Hotwire was killed, its fork guard.
            EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);
            var clock = Stopwatch.StartNew();
            foreach (int pid in tree)
            {
                while (true)
                {
                    try
                    {
                        KillTests.AssertTextEqualsFile(pid, exe, $"pid {pid} of the tree");
                        break;
                    }
                    catch (Xunit.Sdk.XunitException) when (clock.ElapsedMilliseconds < 2000)
                    {
                        Thread.Sleep(10);
                    }
                }
            }
            output.WriteLine($"{tree.Count} processes with the file's code {clock.ElapsedMilliseconds} ms after Hotwire ended");
            foreach (var connection in idle)
            {
                Assert.Equal("10", await Ask(connection, "5"));
            }
            Assert.Equal(0, await Load(port));

            if (!killHotwire)
            {
                Assert.Equal(0, hotwire.ExitCode);
                CliResult replay = HotwireCli.Run("replay", "-d", dir);
                Assert.True(replay.ExitCode == 0, replay.Stderr);
                Assert.Contains("#lost: 0 ", replay.Stdout);
                var calls = replay.Lines.Where(l => !l.StartsWith('#') && l.Contains(": serve <-", StringComparison.Ordinal)).ToList();
                Assert.Equal(4 + Clients * ConnectionsPerClient * RequestsPerConnection, calls.Count);
                int tasks = calls.Select(l => l[..l.IndexOf(' ', l.IndexOf('-'))]).Distinct().Count();
                Assert.True(tasks > 4, $"serve was recorded in {tasks} processes");
            }
        }
        finally
        {
            foreach (var connection in idle)
            {
                connection.Client.Dispose();
            }
            target.WriteLine("stop");
            target.ReadLine(TimeSpan.FromSeconds(10));
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }

    // Clients × connections × requests, each answer checked; returns the requests that failed.
    private static async Task<int> Load(int port)
    {
        int[] failed = await Task.WhenAll(Enumerable.Range(0, Clients).Select(async c =>
        {
            int bad = 0;
            for (int k = 0; k < ConnectionsPerClient; k++)
            {
                try
                {
                    var connection = await Connect(port);
                    using (connection.Client)
                    {
                        for (int r = 0; r < RequestsPerConnection; r++)
                        {
                            long n = c * 100_000 + k * 100 + r;
                            if (await Ask(connection, n.ToString()) != (2 * n).ToString())
                            {
                                bad++;
                            }
                        }
                    }
                }
                catch (Exception e) when (e is IOException or SocketException)
                {
                    bad += RequestsPerConnection;
                }
            }
            return bad;
        }));
        return failed.Sum();
    }

    private static async Task<(TcpClient Client, StreamReader In, StreamWriter Out)> Connect(int port)
    {
        var client = new TcpClient();
        await client.ConnectAsync("127.0.0.1", port);
        NetworkStream stream = client.GetStream();
        return (client, new StreamReader(stream), new StreamWriter(stream) { AutoFlush = true, NewLine = "\n" });
    }

    private static async Task<string?> Ask((TcpClient Client, StreamReader In, StreamWriter Out) connection, string line)
    {
        await connection.Out.WriteLineAsync(line);
        return await connection.In.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10));
    }

    // The live children of a process (from /proc/*/stat).
    private static IEnumerable<int> Children(int parent)
    {
        foreach (string d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid))
            {
                continue;
            }
            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(d, "stat"));
            }
            catch (IOException)
            {
                continue;
            }
            string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            if (int.Parse(f[1]) == parent && f[0] != "Z")
            {
                yield return pid;
            }
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int sig);
}
