using System.Runtime.CompilerServices;

namespace Hotwire.Tests.Infrastructure;

/// <summary>
/// Every file the tests (and the hotwire processes they start) put under Path.GetTempPath() goes
/// into one directory per test process, removed when the process ends. Recordings of busy targets
/// are hundreds of MB each; left in /tmp, a few runs of the suite filled a 250 GB disk and the next
/// run failed with "the disk was full". A run that is killed leaves its directory behind; the next
/// run removes the directories of test processes that no longer exist.
/// </summary>
internal static class TestTemp
{
    private const string Prefix = "hotwire-tests-";

    internal static string Root { get; private set; } = Path.GetTempPath();

    [ModuleInitializer]
    internal static void Init()
    {
        string parent = Path.GetTempPath();
        RemoveLeftovers(parent);
        Root = Path.Combine(parent, $"{Prefix}{Environment.ProcessId}");
        Directory.CreateDirectory(Root);
        // Path.GetTempPath reads TMPDIR at every call, and the processes the tests start inherit it.
        Environment.SetEnvironmentVariable("TMPDIR", Root + "/");
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Remove(Root);
    }

    private static void RemoveLeftovers(string parent)
    {
        foreach (string dir in Directory.EnumerateDirectories(parent, Prefix + "*"))
        {
            if (int.TryParse(Path.GetFileName(dir).AsSpan(Prefix.Length), out int pid) && !Directory.Exists($"/proc/{pid}"))
            {
                Remove(dir);
            }
        }
    }

    private static void Remove(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
