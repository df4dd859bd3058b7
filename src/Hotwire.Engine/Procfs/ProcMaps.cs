using System.Globalization;

namespace Hotwire.Procfs;

public readonly record struct MemoryMapping(ulong Start, ulong End, string Permissions, ulong Offset, ulong Inode, string Path)
{
    public bool IsExecutable => Permissions.Length > 2 && Permissions[2] == 'x';

    public bool IsFileBacked => Path.StartsWith('/');

    public bool IsDeleted => Path.EndsWith(" (deleted)", StringComparison.Ordinal);

    /// <summary>The permissions as mprotect's PROT_* bits.</summary>
    public int Protection => (Permissions[0] == 'r' ? Interop.Sys.PROT_READ : 0) | (Permissions[1] == 'w' ? Interop.Sys.PROT_WRITE : 0)
        | (Permissions[2] == 'x' ? Interop.Sys.PROT_EXEC : 0);
}

/// <summary>Parser of <c>/proc/PID/maps</c>.</summary>
public static class ProcMaps
{
    /// <summary>Reads and parses the maps of <paramref name="pid"/>; throws a user-facing error if the process is gone or unreadable.</summary>
    public static List<MemoryMapping> Read(int pid)
    {
        string text;
        try
        {
            text = File.ReadAllText($"/proc/{pid}/maps");
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new HotwireException($"no process with pid {pid} (it does not exist or has exited)");
        }
        catch (UnauthorizedAccessException)
        {
            throw new HotwireException(
                $"permission denied reading /proc/{pid}/maps: run as the process's owner, or as root / with CAP_SYS_PTRACE");
        }
        catch (IOException e)
        {
            throw new HotwireException($"cannot read /proc/{pid}/maps: {e.Message}");
        }
        if (text.Length == 0)
        {
            // Kernel threads and zombies have no address space.
            throw new HotwireException($"pid {pid} has no user address space (a kernel thread or an exited process)");
        }
        return Parse(text);
    }

    public static List<MemoryMapping> Parse(ReadOnlySpan<char> text)
    {
        var result = new List<MemoryMapping>();
        foreach (ReadOnlySpan<char> rawLine in text.EnumerateLines())
        {
            if (TryParseLine(rawLine, out MemoryMapping m))
            {
                result.Add(m);
            }
        }
        return result;
    }

    // "start-end perms offset dev inode    path"
    public static bool TryParseLine(ReadOnlySpan<char> line, out MemoryMapping mapping)
    {
        mapping = default;
        Span<Range> fields = stackalloc Range[6];
        int n = SplitFields(line, fields);
        if (n < 5)
        {
            return false;
        }
        ReadOnlySpan<char> range = line[fields[0]];
        int dash = range.IndexOf('-');
        if (dash < 0
            || !ulong.TryParse(range[..dash], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong start)
            || !ulong.TryParse(range[(dash + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong end)
            || !ulong.TryParse(line[fields[2]], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong offset)
            || !ulong.TryParse(line[fields[4]], NumberStyles.None, CultureInfo.InvariantCulture, out ulong inode))
        {
            return false;
        }
        string path = n == 6 ? line[fields[5].Start..].Trim().ToString() : "";
        mapping = new MemoryMapping(start, end, line[fields[1]].ToString(), offset, inode, path);
        return true;
    }

    // The first five fields are separated by single spaces; the path (which may hold spaces) is the rest.
    private static int SplitFields(ReadOnlySpan<char> line, Span<Range> fields)
    {
        int count = 0, i = 0;
        while (count < 5)
        {
            while (i < line.Length && line[i] == ' ')
            {
                i++;
            }
            if (i >= line.Length)
            {
                return count;
            }
            int start = i;
            while (i < line.Length && line[i] != ' ')
            {
                i++;
            }
            fields[count++] = start..i;
        }
        while (i < line.Length && line[i] == ' ')
        {
            i++;
        }
        if (i < line.Length)
        {
            fields[count++] = i..line.Length;
        }
        return count;
    }
}
