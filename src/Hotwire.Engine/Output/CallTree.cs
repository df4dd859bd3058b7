using System.Globalization;
using System.Text;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>A distinct caller path to the function a graph was focused on: how many calls took it and their time.</summary>
public sealed record Backtrace(IReadOnlyList<int> Sites, long Hits, ulong Ticks);

/// <summary>
/// The calls of a recording aggregated by call path, threads merged (uftrace graph's tree; flame
/// graphs are drawn from it): a node per distinct path from the root, with its calls and the sum of
/// their durations and of their callees' durations, in TSC ticks. Node 0 is the root: the program,
/// whose children are the outermost traced calls of every thread.
/// <para>
/// Calls that straddle lost events count nowhere (a caller may so show fewer calls and less time
/// than its callees); calls whose callers were lost hang under a root child named
/// <see cref="SiteNames.LostCallersName"/> (site <see cref="SiteNames.LostCallers"/>), never under
/// a frame they may not have been called from.
/// </para>
/// </summary>
public sealed class CallTree : IFrameSink
{
    public const int Root = 0;

    private const int IndexFrom = 8;

    private readonly Dictionary<long, int> _byParentAndSite = [];
    private int[] _site = new int[256];
    private int[] _parent = new int[256];
    private int[] _firstChild = new int[256];
    private int[] _lastChild = new int[256];
    private int[] _nextSibling = new int[256];
    private int[] _childCount = new int[256];
    private long[] _calls = new long[256];
    private ulong[] _total = new ulong[256];
    private ulong[] _childTicks = new ulong[256];
    private int _lostCallers;

    public CallTree()
    {
        Add(-1, -1);
        _calls[Root] = 1;
    }

    public int Count { get; private set; }

    public int Site(int node) => _site[node];

    public int Parent(int node) => _parent[node];

    public long Calls(int node) => _calls[node];

    public ulong TotalTicks(int node) => _total[node];

    public ulong SelfTicks(int node) => _total[node] - Math.Min(_childTicks[node], _total[node]);

    public int ChildCount(int node) => _childCount[node];

    public int LastChild(int node) => _lastChild[node];

    /// <summary>The children of <paramref name="node"/> in the order their paths were first called.</summary>
    public List<int> Children(int node)
    {
        var children = new List<int>(_childCount[node]);
        for (int c = _firstChild[node]; c != 0; c = _nextSibling[c])
        {
            children.Add(c);
        }
        return children;
    }

    /// <summary>The sites from the root's child down to <paramref name="node"/>.</summary>
    public List<int> Path(int node)
    {
        var path = new List<int>();
        for (int n = node; n > Root; n = _parent[n])
        {
            path.Add(_site[n]);
        }
        path.Reverse();
        return path;
    }

    /// <summary>The node for <paramref name="site"/> called from <paramref name="parent"/>, made if new.</summary>
    public int Child(int parent, int site)
    {
        // Most functions call a few others: walking their siblings beats hashing. Wider nodes are indexed.
        if (_childCount[parent] <= IndexFrom)
        {
            for (int c = _firstChild[parent]; c != 0; c = _nextSibling[c])
            {
                if (_site[c] == site)
                {
                    return c;
                }
            }
            int added = Add(parent, site);
            if (_childCount[parent] > IndexFrom)
            {
                for (int c = _firstChild[parent]; c != 0; c = _nextSibling[c])
                {
                    _byParentAndSite[Key(parent, _site[c])] = c;
                }
            }
            return added;
        }
        if (!_byParentAndSite.TryGetValue(Key(parent, site), out int node))
        {
            node = Add(parent, site);
            _byParentAndSite[Key(parent, site)] = node;
        }
        return node;
    }

    private static long Key(int parent, int site) => ((long)parent << 32) | (uint)site;

    public void Enter(ThreadFrames thread, int frame)
    {
        ref Frame f = ref thread[frame];
        if (f.CallerLost)
        {
            if (_lostCallers == 0)
            {
                _lostCallers = Child(Root, SiteNames.LostCallers);
            }
            _calls[_lostCallers]++;
        }
        int caller = thread.Parent(frame);
        f.Node = Child(f.CallerLost ? _lostCallers : caller >= 0 ? thread[caller].Node : Root, f.Site);
        _calls[f.Node]++;
    }

    public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value)
    {
        ref Frame f = ref thread[frame];
        if (end == FrameEnd.Lost)
        {
            _calls[f.Node]--;
            if (f.CallerLost)
            {
                _calls[_lostCallers]--;
            }
            return;
        }
        ulong ticks = exitTsc - f.EntryTsc;
        _total[f.Node] += ticks;
        _childTicks[f.Node] += f.ChildTicks;
        if (f.CallerLost)
        {
            _total[_lostCallers] += ticks;
            _childTicks[_lostCallers] += ticks;
        }
        if (thread.IsOutermost(frame) || f.CallerLost)
        {
            _total[Root] += ticks;
            _childTicks[Root] += ticks;
        }
    }

    /// <summary>
    /// Self time plus the widths of the callees: what a flame graph draws (as flamegraph.pl sums
    /// folded stacks). It is the total time, except above calls whose callers straddled a loss.
    /// </summary>
    public ulong[] InclusiveTicks()
    {
        var ticks = new ulong[Count];
        for (int n = Count - 1; n >= Root; n--)   // callees come after their callers
        {
            ticks[n] += SelfTicks(n);
            if (n > Root)
            {
                ticks[_parent[n]] += ticks[n];
            }
        }
        return ticks;
    }

    /// <summary>
    /// The same tree without the paths on which no call remains (every call on them straddled lost
    /// events and was left out).
    /// </summary>
    public CallTree WithoutEmptyPaths()
    {
        var calls = new long[Count];
        for (int n = Count - 1; n > Root; n--)
        {
            calls[n] += _calls[n];
            calls[_parent[n]] += calls[n];
        }
        var kept = new CallTree();
        kept._calls[Root] = _calls[Root];
        kept._total[Root] = _total[Root];
        kept._childTicks[Root] = _childTicks[Root];
        var pending = new Stack<(int From, int Into)>();
        pending.Push((Root, Root));
        while (pending.TryPop(out var at))
        {
            var children = new List<int>();
            for (int c = _firstChild[at.From]; c != 0; c = _nextSibling[c])
            {
                if (calls[c] > 0)
                {
                    children.Add(c);
                }
            }
            // Children in their order; each one's subtree after it (a stack pops the last first).
            var made = children.Select(c => (c, kept.Copy(this, c, kept.Child(at.Into, _site[c])))).ToList();
            for (int i = made.Count - 1; i >= 0; i--)
            {
                pending.Push(made[i]);
            }
        }
        return kept;
    }

    private int Copy(CallTree source, int from, int into)
    {
        _calls[into] += source._calls[from];
        _total[into] += source._total[from];
        _childTicks[into] += source._childTicks[from];
        if (source._site[from] == SiteNames.LostCallers)
        {
            _lostCallers = into;
        }
        return into;
    }

    /// <summary>
    /// The calls of the functions at <paramref name="sites"/> with everything they called, merged
    /// into one tree whose root is those functions (recursive calls inside them stay inside the
    /// tree), and the distinct paths that led to them, most taken first.
    /// </summary>
    public CallTree Focus(IReadOnlySet<int> sites, out List<Backtrace> backtraces)
    {
        var focused = new CallTree();
        focused._calls[Root] = 0;
        backtraces = [];
        var pending = new Stack<int>();
        pending.Push(Root);
        while (pending.TryPop(out int node))
        {
            for (int c = _firstChild[node]; c != 0; c = _nextSibling[c])
            {
                if (sites.Contains(_site[c]))
                {
                    focused._site[Root] = _site[c];
                    focused.MergeFrom(this, c, Root);
                    backtraces.Add(new Backtrace(Path(c), _calls[c], _total[c]));
                }
                else
                {
                    pending.Push(c);
                }
            }
        }
        backtraces.Sort((a, b) => b.Hits != a.Hits ? b.Hits.CompareTo(a.Hits) : b.Ticks.CompareTo(a.Ticks));
        return focused;
    }

    private void MergeFrom(CallTree source, int from, int into)
    {
        _calls[into] += source._calls[from];
        _total[into] += source._total[from];
        _childTicks[into] += source._childTicks[from];
        for (int c = source._firstChild[from]; c != 0; c = source._nextSibling[c])
        {
            MergeFrom(source, c, Child(into, source._site[c]));
        }
    }

    private int Add(int parent, int site)
    {
        if (Count == _site.Length)
        {
            int size = Count * 2;
            Array.Resize(ref _site, size);
            Array.Resize(ref _parent, size);
            Array.Resize(ref _firstChild, size);
            Array.Resize(ref _lastChild, size);
            Array.Resize(ref _nextSibling, size);
            Array.Resize(ref _childCount, size);
            Array.Resize(ref _calls, size);
            Array.Resize(ref _total, size);
            Array.Resize(ref _childTicks, size);
        }
        int node = Count++;
        _site[node] = site;
        _parent[node] = parent;
        if (parent >= 0)
        {
            if (_firstChild[parent] == 0)
            {
                _firstChild[parent] = node;
            }
            else
            {
                _nextSibling[_lastChild[parent]] = node;
            }
            _lastChild[parent] = node;
            _childCount[parent]++;
        }
        return node;
    }
}

/// <summary>uftrace graph's text: an optional backtrace section, then the aggregated call tree.</summary>
public static class CallGraphWriter
{
    public static void Write(TextWriter w, CallTree tree, string rootName, SiteNames names, TraceTime time, IReadOnlyList<Backtrace>? backtraces, string about)
    {
        w.Write($"# Function Call Graph for '{rootName}' ({about})\n");
        if (backtraces is { Count: > 0 })
        {
            w.Write("=============== BACKTRACE ===============\n");
            for (int i = 0; i < backtraces.Count; i++)
            {
                Backtrace bt = backtraces[i];
                w.Write($" backtrace #{i}: hit {bt.Hits}, time {TimeUnits.Format(time.DurationNs(bt.Ticks))}\n");
                for (int k = 0; k < bt.Sites.Count; k++)
                {
                    w.Write($"   [{k}] {names.Function(bt.Sites[k])} (0x{names[bt.Sites[k]]?.Address ?? 0:x})\n");
                }
                w.Write('\n');
            }
        }
        w.Write("========== FUNCTION CALL GRAPH ==========\n");
        w.Write("# TOTAL TIME   FUNCTION\n");
        var mask = new List<bool>();
        var line = new StringBuilder(128);
        WriteNode(w, tree, CallTree.Root, rootName, names, time, mask, 0, tree.ChildCount(CallTree.Root) > 1, line);
        w.Write('\n');
    }

    // As uftrace's print_graph_node: a node with several children opens an indentation level whose
    // " | " runs down to its last child; " +-" marks each of those children.
    private static void WriteNode(TextWriter w, CallTree tree, int node, string rootName, SiteNames names, TraceTime time, List<bool> mask, int indent, bool needsLine, StringBuilder line)
    {
        line.Clear().Append("  ").Append(TimeUnits.Format(time.DurationNs(tree.TotalTicks(node)))).Append(" : ");
        Indent(line, mask, indent, needsLine);
        string name = node == CallTree.Root ? rootName : names.Function(tree.Site(node));
        line.Append('(').Append(tree.Calls(node).ToString(CultureInfo.InvariantCulture)).Append(") ").Append(name);
        w.Write(line.Append('\n'));

        int origIndent = indent;
        List<int> children = tree.Children(node);
        if (children.Count > 1)
        {
            SetMask(mask, indent++, true);
        }
        int parent = tree.Parent(node);
        if (parent >= 0 && tree.ChildCount(parent) > 1 && origIndent > 0 && tree.LastChild(parent) == node)
        {
            SetMask(mask, origIndent - 1, false);
        }
        for (int i = 0; i < children.Count; i++)
        {
            WriteNode(w, tree, children[i], rootName, names, time, mask, indent, children.Count > 1, line);
            if (i < children.Count - 1)
            {
                line.Clear().Append(' ', 12).Append(" : ");
                Indent(line, mask, indent, false);
                w.Write(line.ToString().TrimEnd());
                w.Write('\n');
            }
        }
        SetMask(mask, origIndent, false);
    }

    private static void Indent(StringBuilder line, List<bool> mask, int indent, bool needsLine)
    {
        int last = -1;
        for (int i = 0; i < indent; i++)
        {
            if (needsLine && mask[i])
            {
                last = i;
            }
        }
        for (int i = 0; i < indent; i++)
        {
            if (!needsLine || i < last)
            {
                line.Append(mask[i] ? " | " : "   ");
            }
            else
            {
                line.Append(i == last ? " +-" : "---");
            }
        }
    }

    private static void SetMask(List<bool> mask, int at, bool value)
    {
        while (mask.Count <= at)
        {
            mask.Add(false);
        }
        mask[at] = value;
    }
}
