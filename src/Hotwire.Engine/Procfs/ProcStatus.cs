using System.Globalization;

namespace Hotwire.Procfs;

/// <summary>Fields of <c>/proc/PID/status</c> (or a thread's, <c>/proc/PID/task/TID/status</c>).</summary>
public static class ProcStatus
{
    /// <summary>The value of <paramref name="field"/> (without "Name:"), or null if the file or field is missing.</summary>
    public static string? Field(string statusPath, string field)
    {
        try
        {
            foreach (string line in File.ReadLines(statusPath))
            {
                if (line.Length > field.Length && line.StartsWith(field, StringComparison.Ordinal) && line[field.Length] == ':')
                {
                    return line[(field.Length + 1)..].Trim();
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    public static int? IntField(string statusPath, string field)
        => int.TryParse(Field(statusPath, field), NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : null;

    /// <summary>True if the signal is pending for the thread (SigPnd) or its process (ShdPnd).</summary>
    public static bool SignalPending(string statusPath, int signal)
    {
        ulong bit = 1UL << (signal - 1);
        return (Mask(Field(statusPath, "SigPnd")) & bit) != 0 || (Mask(Field(statusPath, "ShdPnd")) & bit) != 0;

        static ulong Mask(string? hex) => ulong.TryParse(hex, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong m) ? m : 0;
    }
}
