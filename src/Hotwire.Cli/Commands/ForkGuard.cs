using System.Runtime.InteropServices;
using Hotwire.Patching;

namespace Hotwire.Cli.Commands;

/// <summary>
/// The fork guard: a small process started beside every tracing session (record, live, count, top,
/// metrics). The target's agent restores the target when Hotwire dies (the dead-man switch), but a
/// process forked from the target has no agent: it keeps Hotwire's trampolines. The guard waits
/// for the Hotwire that started it to end, however it ends (a clean detach has already restored
/// the children: it then finds nothing to do), and puts every forked process's sites back.
/// It ignores the terminal's signals and runs in a session of its own, so that Ctrl-C and a
/// SIGKILL of Hotwire leave it to do its work.
/// </summary>
internal static class ForkGuard
{
    public const string Command = "__guard";

    /// <summary>Starts the guard for <paramref name="session"/>; a failure to start it is reported, not fatal.</summary>
    public static void Start(Session session)
    {
        (ulong dataBase, ulong inode) = session.BlockIdentity;
        if (inode == 0 || Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_FORK_GUARD") == "1")   // test-only: the teeth of KillTests' fork test
        {
            return;
        }
        string self = Environment.ProcessPath ?? "hotwire";
        string[] guard = [Command, Environment.ProcessId.ToString(), session.Pid.ToString(), dataBase.ToString(), inode.ToString()];
        // Run as `dotnet hotwire.dll` (the bench's JIT build), the guard is too.
        string[] argv = Path.GetFileNameWithoutExtension(self) == "dotnet"
            ? [self, Path.Combine(AppContext.BaseDirectory, "hotwire.dll"), .. guard]
            : [self, .. guard];
        try
        {
            ForkRestore.StartGuard(self, argv);
        }
        catch (HotwireException e)
        {
            Console.Error.WriteLine($"hotwire: warning: no fork guard ({e.Message}): if Hotwire is killed, processes forked from pid {session.Pid} keep its trampolines");
        }
    }

    /// <summary>hotwire __guard OWNER TARGET DATABASE INODE</summary>
    public static int Run(string[] args)
    {
        using var ignoreInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => c.Cancel = true);
        using var ignoreTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => c.Cancel = true);
        using var ignoreHup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c => c.Cancel = true);
        using var ignoreQuit = PosixSignalRegistration.Create(PosixSignal.SIGQUIT, c => c.Cancel = true);
        if (args.Length != 5 || !int.TryParse(args[1], out int owner) || !int.TryParse(args[2], out int target)
            || !ulong.TryParse(args[3], out ulong dataBase) || !ulong.TryParse(args[4], out ulong inode))
        {
            Console.Error.WriteLine("hotwire: __guard is Hotwire's own helper, not a command");
            return 2;
        }
        try
        {
            ForkRestore.GuardForks(owner, target, dataBase, inode);
        }
        catch (Exception)
        {
            return 1;   // nobody reads our output: stdout and stderr are /dev/null
        }
        return 0;
    }
}
