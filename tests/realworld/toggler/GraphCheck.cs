using System.Text.Json;

namespace Hotwire.RealWorld;

/// <summary>
/// Rebuilds the calls of a function_graph recording from info.json and events.bin with its own
/// decoder (docs/data-format.md), not Hotwire's readers, and checks the tree strictly, per thread:
/// an entry at depth d has exactly d open frames below it once frames left by longjmp are closed
/// (closing deeper frames is what an entry at a lower depth means); an exit at depth d closes the
/// open frame at depth d, which must be the same function. Prints key=value lines.
/// </summary>
public static class GraphCheck
{
    private const uint Magic = 0x32455748; // "HWE2"

    private sealed class Fn
    {
        public long Entries, Exits, Unwound, Unfinished, LateExits;
    }

    public static int Run(string[] args)
    {
        string dir = args[0];
        string? csv = null;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--csv")
            {
                csv = args[++i];
            }
        }

        using JsonDocument info = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "info.json")));
        JsonElement root = info.RootElement;
        if (root.GetProperty("tracer").GetString() != "function_graph")
        {
            Console.Error.WriteLine("check-graph: not a function_graph recording");
            return 2;
        }
        int fields = root.GetProperty("eventBytes").GetInt32() / 8;
        var names = new Dictionary<long, string>();
        foreach (JsonElement s in root.GetProperty("sites").EnumerateArray())
        {
            names[s.GetProperty("index").GetInt64()] = s.GetProperty("function").GetString()!;
        }
        long lost = root.GetProperty("lostNoBuffer").GetInt64() + root.GetProperty("shadowOverflow").GetInt64();
        long threadEvents = 0;
        foreach (JsonElement t in root.GetProperty("threads").EnumerateArray())
        {
            lost += t.GetProperty("lost").GetInt64();
            threadEvents += t.GetProperty("events").GetInt64();
        }

        var fns = new Dictionary<string, Fn>();
        Fn F(long site) => fns.TryGetValue(names[site], out Fn? f) ? f : fns[names[site]] = new Fn();
        var stacks = new Dictionary<uint, List<long>>();   // per thread: the open frames' sites
        long events = 0, entries = 0, exits = 0, unmatched = 0, depthGaps = 0, unwound = 0, lateExits = 0, maxDepth = 0;
        var firstProblems = new List<string>();
        void Problem(string p)
        {
            if (firstProblems.Count < 5)
            {
                firstProblems.Add(p);
            }
        }

        byte[] data = File.ReadAllBytes(Path.Combine(dir, "events.bin"));
        var prev = new ulong[fields];
        var ev = new ulong[fields];
        int at = 0;
        while (at + 16 <= data.Length)
        {
            uint magic = BitConverter.ToUInt32(data, at), tid = BitConverter.ToUInt32(data, at + 4);
            uint count = BitConverter.ToUInt32(data, at + 8), packed = BitConverter.ToUInt32(data, at + 12);
            if (magic != Magic)
            {
                Console.Error.WriteLine($"check-graph: bad chunk magic 0x{magic:x} at offset {at}");
                return 1;
            }
            at += 16;
            int end = at + (int)packed;
            if (end > data.Length)
            {
                Console.Error.WriteLine("check-graph: events.bin cut short");
                return 1;
            }
            Array.Clear(prev);
            if (!stacks.TryGetValue(tid, out List<long>? stack))
            {
                stacks[tid] = stack = [];
            }
            for (uint n = 0; n < count; n++)
            {
                for (int f = 0; f < fields; f++)
                {
                    ulong v = 0;
                    int shift = 0;
                    byte b;
                    do
                    {
                        b = data[at++];
                        v |= (ulong)(b & 0x7f) << shift;
                        shift += 7;
                    }
                    while ((b & 0x80) != 0);
                    long delta = (long)(v >> 1) ^ -(long)(v & 1);   // zigzag
                    ev[f] = prev[f] + (ulong)delta;
                    prev[f] = ev[f];
                }
                events++;
                long site = (long)ev[2];
                int kind = (int)(ev[3] & 3), depth = (int)(ev[3] >> 2);
                if (!names.ContainsKey(site))
                {
                    Console.Error.WriteLine($"check-graph: event names site {site}, not in info.json");
                    return 1;
                }
                if (kind == 0)
                {
                    entries++;
                    F(site).Entries++;
                    if (depth > stack.Count)
                    {
                        depthGaps++;
                        Problem($"tid {tid}: entry of {names[site]} at depth {depth} with only {stack.Count} open frames");
                        while (stack.Count < depth)
                        {
                            stack.Add(-1);
                        }
                    }
                    while (stack.Count > depth)
                    {
                        long gone = stack[^1];
                        stack.RemoveAt(stack.Count - 1);
                        if (gone >= 0)
                        {
                            F(gone).Unwound++;
                            unwound++;
                        }
                    }
                    stack.Add(site);
                    maxDepth = Math.Max(maxDepth, stack.Count);
                }
                else
                {
                    exits++;
                    if (kind == 2)
                    {
                        lateExits++;
                        F(site).LateExits++;
                    }
                    else
                    {
                        F(site).Exits++;
                    }
                    if (depth < stack.Count && stack[depth] == site)
                    {
                        while (stack.Count > depth + 1)
                        {
                            long gone = stack[^1];
                            stack.RemoveAt(stack.Count - 1);
                            if (gone >= 0)
                            {
                                F(gone).Unwound++;
                                unwound++;
                            }
                        }
                        stack.RemoveAt(stack.Count - 1);
                        if (kind == 2)
                        {
                            F(site).Unwound++;
                            unwound++;
                        }
                    }
                    else
                    {
                        unmatched++;
                        Problem($"tid {tid}: exit of {names[site]} at depth {depth} matches no open frame ({stack.Count} open{(depth < stack.Count && stack[depth] >= 0 ? ", " + names[stack[depth]] + " there" : "")})");
                    }
                }
            }
            if (at != end)
            {
                Console.Error.WriteLine($"check-graph: chunk of tid {tid} decoded to offset {at}, expected {end}");
                return 1;
            }
        }

        long unfinished = 0;
        foreach (List<long> stack in stacks.Values)
        {
            foreach (long site in stack.Where(s => s >= 0))
            {
                F(site).Unfinished++;
                unfinished++;
            }
        }

        Console.WriteLine($"events={events}");
        Console.WriteLine($"info_events={threadEvents}");
        Console.WriteLine($"lost={lost}");
        Console.WriteLine($"threads={stacks.Count}");
        Console.WriteLine($"entries={entries}");
        Console.WriteLine($"exits={exits}");
        Console.WriteLine($"late_exits={lateExits}");
        Console.WriteLine($"unmatched_exits={unmatched}");
        Console.WriteLine($"depth_gaps={depthGaps}");
        Console.WriteLine($"unwound={unwound}");
        Console.WriteLine($"unfinished={unfinished}");
        Console.WriteLine($"max_depth={maxDepth}");
        Console.WriteLine($"unwound_functions={string.Join(',', fns.Where(kv => kv.Value.Unwound > 0).OrderByDescending(kv => kv.Value.Unwound).Take(8).Select(kv => $"{kv.Key}:{kv.Value.Unwound}"))}");
        Console.WriteLine($"unfinished_functions={string.Join(',', fns.Where(kv => kv.Value.Unfinished > 0).Select(kv => kv.Key))}");
        foreach (string p in firstProblems)
        {
            Console.WriteLine($"problem={p}");
        }
        if (csv is not null)
        {
            using var w = new StreamWriter(csv);
            w.WriteLine("function,entries,exits,late_exits,unwound,unfinished");
            foreach ((string name, Fn f) in fns.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                w.WriteLine($"{name},{f.Entries},{f.Exits},{f.LateExits},{f.Unwound},{f.Unfinished}");
            }
        }
        return 0;
    }
}
