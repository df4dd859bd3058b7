using System.CommandLine;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary>What the readers of a recording (replay, report, graph, dump) share: -d, --tid, -o, and their warnings.</summary>
internal sealed class ReaderOptions
{
    public Option<string> Data { get; } = new("--data", "-d") { Description = "Data directory", DefaultValueFactory = _ => "hotwire.data" };

    public Option<string?> Tids { get; } = new("--tid") { Description = "Only these threads (comma-separated tids)" };

    public void AddTo(Command command)
    {
        command.Options.Add(Data);
        command.Options.Add(Tids);
    }

    /// <summary>Reads info.json and checks that the chosen threads are in the recording.</summary>
    public (string Dir, TraceInfo Info, IReadOnlySet<int>? Tids) Open(ParseResult result)
    {
        string dir = result.GetValue(Data)!;
        IReadOnlySet<int>? tids = RecordCommand.ParseTids(result.GetValue(Tids));
        TraceInfo info = TraceData.ReadInfo(dir);
        if (tids is not null && !info.Threads.Any(t => tids.Contains(t.Tid)))
        {
            string known = info.Threads.Count == 0 ? "none" : string.Join(", ", info.Threads.Select(t => $"{t.Tid} ({t.Name})"));
            throw new HotwireException($"--tid: no such thread in {dir} (its threads: {known})");
        }
        return (dir, info, tids);
    }

    /// <summary>
    /// fd 1 as a plain stream: .NET's console stream ignores EPIPE, so a reader piped into
    /// <c>head</c> would run to the end of a 100 M-event recording; on this one the write fails,
    /// and <see cref="CommandRunner"/> ends the command quietly.
    /// </summary>
    public static Stream StandardOutput() => new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(1, ownsHandle: false), FileAccess.Write, 1);

    /// <summary>The reader of our output went away (| head).</summary>
    public static bool IsBrokenPipe(IOException e) => e.HResult == 32 || e.Message.Contains("Broken pipe", StringComparison.OrdinalIgnoreCase);

    /// <summary>stdout, or the file given with -o (its directory made if needed).</summary>
    public static Stream OpenOutput(string? path)
    {
        if (path is null or "-")
        {
            return StandardOutput();
        }
        try
        {
            string? parent = Path.GetDirectoryName(Path.GetFullPath(path));
            if (parent is not null)
            {
                Directory.CreateDirectory(parent);
            }
            return new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new HotwireException($"cannot write {path}: {e.Message}");
        }
    }

    public static void WarnTruncated(string dir, long? cut)
    {
        if (cut is long at)
        {
            Console.Error.WriteLine($"hotwire: warning: {dir}/events.bin is cut short at byte {at} (disk full, or Hotwire was killed): showing the complete events before it");
        }
    }

    /// <summary>
    /// One warning line for the gaps that make figures lower bounds (lost events, repaired calls),
    /// and the calls left out because events were lost while they ran (with
    /// <paramref name="callPaths"/>, also those shown under [lost events]), so that
    /// machine-readable output stays clean.
    /// </summary>
    public static void WarnGaps(TraceInfo info, IReadOnlySet<int>? tids, CallGraph? graph, bool callPaths = false)
    {
        var notes = ReaderNotes.Recording(info, tids).Where(n => n.StartsWith("lost", StringComparison.Ordinal) || n.Contains("not recorded", StringComparison.Ordinal)
            || n.StartsWith("recorded by an older", StringComparison.Ordinal)).ToList();
        if (graph is not null)
        {
            notes.AddRange(ReaderNotes.LeftOut(graph, callPaths));
            notes.AddRange(ReaderNotes.Reconstruction(graph).Where(n => n.Contains("entry is not in the recording", StringComparison.Ordinal)));
        }
        if (notes.Count > 0)
        {
            Console.Error.WriteLine($"hotwire: warning: {string.Join("; ", notes)}");
        }
    }

    /// <summary>Fails before any output when the recording has no events at all.</summary>
    public static void RequireEvents(string dir, TraceInfo info)
    {
        if (HoldsNoEvents(dir, info))
        {
            throw new HotwireException($"{dir} holds no calls: nothing traced was called while it was recording");
        }
    }

    /// <summary>A recording with no events shows as a bare header: one warning says why.</summary>
    public static void WarnNoEvents(string dir, TraceInfo info)
    {
        if (HoldsNoEvents(dir, info))
        {
            Console.Error.WriteLine($"hotwire: warning: {dir} holds no events: nothing traced was called while it was recording");
        }
    }

    private static bool HoldsNoEvents(string dir, TraceInfo info)
    {
        var events = new FileInfo(Path.Combine(dir, TraceData.EventsFile));
        return info.Tracer != Tracers.Profile && events.Exists && events.Length == 0;
    }

    /// <summary>Fails when the chosen threads made no call at all.</summary>
    public static void RequireCalls(string dir, long calls, IReadOnlySet<int>? tids)
    {
        if (calls == 0)
        {
            throw new HotwireException(tids is null
                ? $"{dir} holds no calls: nothing traced was called while it was recording"
                : $"{dir} holds no calls of thread {string.Join(", ", tids)}");
        }
    }
}
