namespace Hotwire.Procfs;

/// <summary>The state letter of <c>/proc/PID/stat</c> (or a thread's, <c>/proc/PID/task/TID/stat</c>).</summary>
public static class ProcStat
{
    /// <summary>False once the process is gone or a zombie.</summary>
    public static bool IsAlive(int pid) => IsAliveAt($"/proc/{pid}/stat");

    /// <summary>False once the process or thread whose stat file this is is gone or a zombie.</summary>
    public static bool IsAliveAt(string statPath)
    {
        try
        {
            string stat = File.ReadAllText(statPath);
            // The state follows the command name, which may itself hold ") ".
            return stat[stat.LastIndexOf(')') + 2] is not ('Z' or 'X');
        }
        catch (IOException)
        {
            return false;
        }
    }
}
