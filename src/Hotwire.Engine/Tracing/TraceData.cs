using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Hotwire.Tracing;

/// <summary>
/// <c>hotwire.data/</c>, format version 4 (docs/data-format.md): <c>info.json</c> holds everything
/// replay needs once the target is gone (sites, modules and their symbols, threads, clock
/// calibration, lost counts); <c>events.bin</c> holds chunks of raw events as the threads wrote them.
/// </summary>
public sealed class TraceInfo
{
    public const string FormatName = "hotwire.data";
    /// <summary>
    /// 3: events carry the count of events their thread lost just before them; 4: function_graph
    /// events carry the stack slot of their frame (docs/data-format.md).
    /// </summary>
    public const int CurrentVersion = 4;

    /// <summary>The first version whose events say where their thread lost events.</summary>
    public const int LossMarksVersion = 3;

    /// <summary>The first version whose function_graph events carry their frame's stack slot.</summary>
    public const int SlotsVersion = 4;

    public string Format { get; set; } = FormatName;

    public int Version { get; set; } = CurrentVersion;

    public string Tracer { get; set; } = "function";

    public int Pid { get; set; }

    public string Command { get; set; } = "";

    public DateTime Started { get; set; }

    public int EventBytes { get; set; }

    public int Args { get; set; }

    /// <summary>Events carry an info field (kind and depth) after the site: the function_graph tracer.</summary>
    [JsonIgnore]
    public bool HasInfo => Tracer == Tracers.FunctionGraph;

    /// <summary>function_graph events carry the stack slot of their frame after the info field (format 4).</summary>
    [JsonIgnore]
    public bool HasSlots => HasInfo && Version >= SlotsVersion;

    /// <summary>The u64 fields of an event before its arguments: 3 (function), 4 (function_graph before format 4), 5.</summary>
    [JsonIgnore]
    public int FixedFields => HasSlots ? EventLayout.GraphFields : HasInfo ? EventLayout.GraphFieldsWithoutSlot : EventLayout.FunctionFields;

    /// <summary>Stack depth limit the graph tracer recorded with (0: none), and the time filter in ns.</summary>
    public int MaxDepth { get; set; }

    /// <summary>Exit events carry the return value (rax).</summary>
    public bool Retval { get; set; }

    public long TimeFilterNs { get; set; }

    /// <summary>Calls not recorded because a thread's shadow stack was full (graph and profile tracers).</summary>
    public ulong ShadowOverflow { get; set; }

    /// <summary>The profile tracer's per-function figures (no events are written).</summary>
    public List<ProfileEntry>? Profile { get; set; }

    public ClockInfo Clock { get; set; } = new();

    public List<ThreadInfo> Threads { get; set; } = [];

    public ulong LostNoBuffer { get; set; }

    public List<SiteInfo> Sites { get; set; } = [];

    public List<ModuleInfo> Modules { get; set; } = [];

    [JsonIgnore]
    public long TotalEvents => Threads.Sum(t => t.Events);

    [JsonIgnore]
    public ulong TotalLost => Threads.Aggregate(LostNoBuffer, (n, t) => n + t.Lost);

    /// <summary>Events carry loss marks: a reader knows where in each thread events were lost.</summary>
    [JsonIgnore]
    public bool MarksLoss => Version >= LossMarksVersion;
}

/// <summary>The tracers a recording can come from.</summary>
public static class Tracers
{
    public const string Function = "function";
    public const string FunctionGraph = "function_graph";
    public const string Profile = "profile";
}

/// <summary>One function's profile: calls and times in ns (self = total − time in traced callees).</summary>
public sealed class ProfileEntry
{
    public int Site { get; set; }

    public int Tid { get; set; }

    public ulong Calls { get; set; }

    public long TotalNs { get; set; }

    public long SelfNs { get; set; }

    public long MinNs { get; set; }

    public long MaxNs { get; set; }
}

public sealed class ClockInfo
{
    public ulong StartTsc { get; set; }

    public long StartNs { get; set; }

    public ulong EndTsc { get; set; }

    public long EndNs { get; set; }

    public ClockCalibration ToCalibration() => new(new ClockSample(StartTsc, StartNs), new ClockSample(EndTsc, EndNs));
}

public sealed class ThreadInfo
{
    public int Tid { get; set; }

    public int Pid { get; set; }

    public string Name { get; set; } = "";

    public long Events { get; set; }

    public ulong Lost { get; set; }
}

public sealed class SiteInfo
{
    public int Index { get; set; }

    public string Function { get; set; } = "";

    public string Module { get; set; } = "";

    public ulong Address { get; set; }
}

public sealed class ModuleInfo
{
    public string Path { get; set; } = "";

    public ulong Start { get; set; }

    public ulong End { get; set; }

    /// <summary>[runtime start, size, name] of every function symbol.</summary>
    public List<SymbolInfo> Symbols { get; set; } = [];
}

public sealed record SymbolInfo(ulong Start, ulong Size, string Name);

/// <summary>Source-generated JSON for info.json: no reflection, so it works in the native (trimmed) build.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(TraceInfo))]
internal sealed partial class TraceInfoJson : JsonSerializerContext
{
}

/// <summary>Reads and writes a data directory.</summary>
public static class TraceData
{
    public const string InfoFile = "info.json";
    public const string EventsFile = "events.bin";
    public const uint ChunkMagic = 0x56455748; // "HWEV": raw events (version 1)
    public const uint PackedChunkMagic = 0x32455748; // "HWE2": delta + varint packed events (version 2)

    public static void WriteInfo(string dir, TraceInfo info)
    {
        string temp = Path.Combine(dir, InfoFile + ".tmp");
        File.WriteAllText(temp, JsonSerializer.Serialize(info, TraceInfoJson.Default.TraceInfo));
        File.Move(temp, Path.Combine(dir, InfoFile), overwrite: true);
    }

    public static TraceInfo ReadInfo(string dir)
    {
        if (!Directory.Exists(dir))
        {
            throw new HotwireException($"{dir}: no such data directory (record one with hotwire record, or give -d DIR)");
        }
        string path = Path.Combine(dir, InfoFile);
        if (!File.Exists(path))
        {
            throw new HotwireException($"{dir} is not a Hotwire recording: {InfoFile} is missing (was the recording interrupted before it finished?)");
        }
        TraceInfo? info;
        try
        {
            info = JsonSerializer.Deserialize(File.ReadAllText(path), TraceInfoJson.Default.TraceInfo);
        }
        catch (JsonException e)
        {
            throw new HotwireException($"{path} is damaged: {e.Message}");
        }
        if (info is null || info.Format != TraceInfo.FormatName)
        {
            throw new HotwireException($"{path} is not a Hotwire recording");
        }
        if (info.Version > TraceInfo.CurrentVersion)
        {
            throw new HotwireException($"{dir} was written by a newer Hotwire (format version {info.Version}; this one reads up to {TraceInfo.CurrentVersion}): update Hotwire");
        }
        return info;
    }

    /// <summary>Every event of the recording, per thread in the order written.</summary>
    public static Dictionary<int, List<RawEvent>> ReadEvents(string dir, TraceInfo info) => ReadEvents(dir, info, out _);

    /// <summary>
    /// Every event, per thread in the order written. A recording cut short (disk full, Hotwire
    /// killed) ends in a partial chunk: the complete events before it are returned and
    /// <paramref name="truncatedAt"/> says where the file stops making sense.
    /// </summary>
    public static Dictionary<int, List<RawEvent>> ReadEvents(string dir, TraceInfo info, out long? truncatedAt)
    {
        var result = new Dictionary<int, List<RawEvent>>();
        truncatedAt = ReadChunks(dir, info, (tid, chunk) =>
        {
            if (!result.TryGetValue(tid, out List<RawEvent>? events))
            {
                result[tid] = events = [];
            }
            events.AddRange(chunk);
        });
        return result;
    }

    /// <summary>Where one chunk of events.bin lies: its thread, its header's offset, and its events.</summary>
    public readonly record struct ChunkRef(int Tid, long Offset, int Count);

    /// <summary>
    /// The chunks of events.bin, read from their headers only (payloads are skipped): what a
    /// reader needs to merge threads without decoding every event first. A chunk cut short is
    /// left out; <paramref name="truncatedAt"/> says where.
    /// </summary>
    public static List<ChunkRef> IndexChunks(string dir, TraceInfo info, out long? truncatedAt)
    {
        string path = Path.Combine(dir, EventsFile);
        if (!File.Exists(path))
        {
            throw new HotwireException($"{dir} is not a complete Hotwire recording: {EventsFile} is missing");
        }
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 4096);
        long end = stream.Length;
        var chunks = new List<ChunkRef>();
        Span<byte> header = stackalloc byte[16];
        long offset = 0;
        truncatedAt = null;
        while (offset < end)
        {
            stream.Position = offset;
            if (stream.ReadAtLeast(header, 16, throwOnEndOfStream: false) < 16)
            {
                truncatedAt = offset;
                break;
            }
            (int tid, int count, int size, bool packed, long length) = ChunkHeader(header, info, path, offset);
            if (offset + 16 + length > end)
            {
                truncatedAt = offset;   // the complete events of a partial chunk are not worth a special case here
                break;
            }
            chunks.Add(new ChunkRef(tid, offset, count));
            offset += 16 + length;
        }
        return chunks;
    }

    // A chunk header: magic, tid, event count, and the payload's size (packed) or one event's (raw).
    private static (int Tid, int Count, int Size, bool Packed, long Length) ChunkHeader(ReadOnlySpan<byte> header, TraceInfo info, string path, long offset)
    {
        uint magic = BitConverter.ToUInt32(header);
        int tid = BitConverter.ToInt32(header[4..]);
        int count = BitConverter.ToInt32(header[8..]);
        int size = BitConverter.ToInt32(header[12..]);
        bool packed = magic == PackedChunkMagic;
        if ((magic != ChunkMagic && !packed) || (!packed && size != info.EventBytes) || count < 0 || size < 0)
        {
            throw new HotwireException($"{path} is damaged at byte {offset} (a chunk header is not valid)");
        }
        return (tid, count, size, packed, packed ? size : (long)count * size);
    }

    /// <summary>Decodes the chunk at <paramref name="chunk"/> into <paramref name="into"/> (cleared first).</summary>
    public static void ReadChunk(FileStream stream, TraceInfo info, ChunkRef chunk, ref byte[] buffer, List<RawEvent> into)
    {
        into.Clear();
        Span<byte> header = stackalloc byte[16];
        stream.Position = chunk.Offset;
        stream.ReadExactly(header);
        bool packed = BitConverter.ToUInt32(header) == PackedChunkMagic;
        int size = BitConverter.ToInt32(header[12..]);
        int length = packed ? size : chunk.Count * size;
        if (buffer.Length < length)
        {
            buffer = new byte[Math.Max(length, buffer.Length * 2)];
        }
        stream.ReadExactly(buffer.AsSpan(0, length));
        if (packed)
        {
            EventPacking.Unpack(buffer.AsSpan(0, length), chunk.Count, info.Args, into, info.FixedFields);
        }
        else
        {
            for (int i = 0; i < chunk.Count; i++)
            {
                into.Add(RawEvent.Decode(buffer.AsSpan(i * size, size), info.Args, info.FixedFields));
            }
        }
    }

    /// <summary>
    /// Streams the recording chunk by chunk (a thread's chunks come in its order; the list is
    /// reused between calls), so readers of very large recordings never hold all events at once.
    /// Returns where the file was cut short, if it was.
    /// </summary>
    public static long? ReadChunks(string dir, TraceInfo info, Action<int, List<RawEvent>> onChunk)
    {
        string path = Path.Combine(dir, EventsFile);
        if (!File.Exists(path))
        {
            throw new HotwireException($"{dir} is not a complete Hotwire recording: {EventsFile} is missing");
        }
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        Span<byte> header = stackalloc byte[16];
        var chunk = new List<RawEvent>(4096);
        byte[] buffer = new byte[1 << 16];
        long offset = 0;
        while (true)
        {
            chunk.Clear();
            int got = stream.ReadAtLeast(header, 16, throwOnEndOfStream: false);
            if (got == 0)
            {
                return null;
            }
            if (got < 16)
            {
                return offset;
            }
            (int tid, int count, int size, bool packed, long length) = ChunkHeader(header, info, path, offset);
            if (length > buffer.Length)
            {
                buffer = new byte[Math.Max(length, buffer.Length * 2L)];
            }
            int read = stream.ReadAtLeast(buffer.AsSpan(0, (int)length), (int)length, throwOnEndOfStream: false);
            if (packed)
            {
                int used = EventPacking.Unpack(buffer.AsSpan(0, read), count, info.Args, chunk, info.FixedFields);
                if (read == length && used != size)
                {
                    throw new HotwireException($"{path} is damaged at byte {offset} (a packed chunk does not decode)");
                }
            }
            else
            {
                for (int i = 0; i < read / size; i++)
                {
                    chunk.Add(RawEvent.Decode(buffer.AsSpan(i * size, size), info.Args, info.FixedFields));
                }
            }
            onChunk(tid, chunk);
            if (read < length)
            {
                return offset; // cut short: the complete events of the partial chunk were kept
            }
            offset += 16 + length;
        }
    }
}

/// <summary>
/// One event as the trampoline wrote it. Function tracer: {tsc, caller, site, args…}. Graph
/// tracer: {tsc, value, site, info, args…} where value is the caller's return address at an entry
/// and the return value (rax, with --retval) at an exit, and info = depth × 4 + kind. From format
/// version 3 the high half of info (function tracer: of the site word, kept here in
/// <see cref="Info"/>) counts the thread's events dropped just before this one.
/// </summary>
public readonly record struct RawEvent(ulong Tsc, ulong Caller, int Site, ulong[] Args, ulong Info = 0, ulong Slot = 0)
{
    public const int Entry = 0;
    public const int Exit = 1;

    /// <summary>An exit found late: the frame was left by longjmp or an exception, not by a return.</summary>
    public const int Unwound = 2;

    public int Kind => (int)(Info & 3);

    public int Depth => (int)((uint)Info >> 2);

    /// <summary>Events of this thread dropped (its buffer was full) after its previous event and before this one.</summary>
    public uint LostBefore => (uint)(Info >> 32);

    /// <summary>The high half of a function-tracer event's site word: the loss mark.</summary>
    internal static ulong LossOfSiteWord(ulong site) => site & 0xFFFF_FFFF_0000_0000;

    public bool IsExit => Kind != Entry;

    /// <summary>The return value of an exit event.</summary>
    public ulong Value => Caller;

    /// <summary>Decodes one event of <paramref name="fixedFields"/> fields (3: function, 4 or 5: function_graph, see <see cref="TraceInfo.FixedFields"/>) and its arguments.</summary>
    public static RawEvent Decode(ReadOnlySpan<byte> e, int args, int fixedFields = EventLayout.FunctionFields)
    {
        bool info = fixedFields > EventLayout.FunctionFields;
        int argsAt = EventLayout.ArgsAt(fixedFields);
        var values = args == 0 ? [] : new ulong[args];
        for (int i = 0; i < args; i++)
        {
            values[i] = BitConverter.ToUInt64(e[(argsAt + 8 * i)..]);
        }
        ulong site = BitConverter.ToUInt64(e[EventLayout.Site..]);
        return new RawEvent(BitConverter.ToUInt64(e[EventLayout.Tsc..]), BitConverter.ToUInt64(e[EventLayout.Value..]), (int)site, values,
            info ? BitConverter.ToUInt64(e[EventLayout.Info..]) : LossOfSiteWord(site),
            fixedFields > EventLayout.GraphFieldsWithoutSlot ? BitConverter.ToUInt64(e[EventLayout.Slot..]) : 0);
    }

    /// <summary>Writes the event back as a tracer would have (<see cref="Decode"/>'s inverse) in <see cref="EventLayout.Bytes"/> bytes.</summary>
    public void Encode(Span<byte> e, int fixedFields)
    {
        bool info = fixedFields > EventLayout.FunctionFields;
        BitConverter.TryWriteBytes(e[EventLayout.Tsc..], Tsc);
        BitConverter.TryWriteBytes(e[EventLayout.Value..], Caller);
        BitConverter.TryWriteBytes(e[EventLayout.Site..], (ulong)(uint)Site | (info ? 0 : Info));
        if (info)
        {
            BitConverter.TryWriteBytes(e[EventLayout.Info..], Info);
        }
        if (fixedFields > EventLayout.GraphFieldsWithoutSlot)
        {
            BitConverter.TryWriteBytes(e[EventLayout.Slot..], Slot);
        }
        int argsAt = EventLayout.ArgsAt(fixedFields);
        for (int i = 0; i < Args.Length; i++)
        {
            BitConverter.TryWriteBytes(e[(argsAt + 8 * i)..], Args[i]);
        }
    }
}

/// <summary>
/// Events on disk, packed: per chunk, each field as the difference from the same field of the
/// previous event (zigzag varint): timestamps, callers and arguments change little from call to
/// call, so an event takes about 5 bytes instead of 24 and the recorder writes several times more
/// events per second for the same disk bandwidth.
/// </summary>
public static class EventPacking
{
    /// <summary>Appends <paramref name="count"/> raw events of <paramref name="eventBytes"/> each; returns bytes written.</summary>
    public static unsafe int Pack(ReadOnlySpan<byte> raw, int count, int eventBytes, int args, Span<ulong> previous, Span<byte> output)
    {
        previous.Clear();
        int fields = eventBytes / 8;
        // Bounds are checked once here, not per byte: the recorder packs tens of millions of events a second.
        if (raw.Length < count * eventBytes || output.Length < count * fields * 10 || previous.Length < fields)
        {
            throw new ArgumentException("buffers too small for the events");
        }
        fixed (byte* from = raw)
        fixed (byte* to = output)
        fixed (ulong* last = previous)
        {
            byte* at = to;
            byte* ev = from;
            for (int e = 0; e < count; e++, ev += eventBytes)
            {
                for (int f = 0; f < fields; f++)
                {
                    ulong v = Unsafe.ReadUnaligned<ulong>(ev + 8 * f);
                    long delta = (long)(v - last[f]);
                    last[f] = v;
                    ulong zigzag = (ulong)((delta << 1) ^ (delta >> 63));
                    while (zigzag >= 0x80)
                    {
                        *at++ = (byte)(zigzag | 0x80);
                        zigzag >>= 7;
                    }
                    *at++ = (byte)zigzag;
                }
            }
            return (int)(at - to);
        }
    }

    /// <summary>The most bytes <see cref="Pack"/> can write for <paramref name="count"/> events.</summary>
    public static int MaxPackedBytes(int count, int args, int fixedFields = EventLayout.FunctionFields) => count * (fixedFields + args) * 10;

    /// <summary>Decodes up to <paramref name="count"/> events; returns the bytes consumed by complete events.</summary>
    public static int Unpack(ReadOnlySpan<byte> packed, int count, int args, List<RawEvent> into, int fixedFields = EventLayout.FunctionFields)
    {
        bool info = fixedFields > EventLayout.FunctionFields;
        int fields = fixedFields + args;
        Span<ulong> previous = stackalloc ulong[fields];
        Span<ulong> values = stackalloc ulong[fields];
        int at = 0;
        int end = 0;
        for (int e = 0; e < count; e++)
        {
            for (int f = 0; f < fields; f++)
            {
                ulong zigzag = 0;
                int shift = 0;
                while (true)
                {
                    if (at >= packed.Length || shift > 63)
                    {
                        return end;
                    }
                    byte b = packed[at++];
                    zigzag |= (ulong)(b & 0x7f) << shift;
                    if (b < 0x80)
                    {
                        break;
                    }
                    shift += 7;
                }
                long delta = (long)(zigzag >> 1) ^ -(long)(zigzag & 1);
                previous[f] += (ulong)delta;
                values[f] = previous[f];
            }
            var argValues = args == 0 ? [] : values[fixedFields..].ToArray();
            // The fields in EventLayout's order, one u64 each.
            into.Add(new RawEvent(values[EventLayout.Tsc / 8], values[EventLayout.Value / 8], (int)values[EventLayout.Site / 8], argValues,
                info ? values[EventLayout.Info / 8] : RawEvent.LossOfSiteWord(values[EventLayout.Site / 8]),
                fixedFields > EventLayout.GraphFieldsWithoutSlot ? values[EventLayout.Slot / 8] : 0));
            end = at;
        }
        return end;
    }
}
