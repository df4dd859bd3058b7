namespace Hotwire.Patching;

/// <summary>
/// What the registry needs done to carry out a change: the executor side of the kernel's
/// ftrace_replace_code. <see cref="Session"/> implements it on a real process; tests use a fake.
/// </summary>
internal interface IOpsExecutor
{
    /// <summary>The sites an ops' filters choose (asked once per ops).</summary>
    List<SiteRecord> Select(Ops ops);

    /// <summary>The ops is about to be on <paramref name="sites"/> for the first time: its memory and code.</summary>
    void Prepare(Ops ops, IReadOnlyList<SiteRecord> sites);

    /// <summary>
    /// Gives every site in <paramref name="sites"/> the bytes its ops want, in one batch. With
    /// <paramref name="bases"/>, what detach restores changes with it, and
    /// <paramref name="beforeBatch"/> sees those changes before any byte does. Throws, having
    /// changed nothing, when the batch cannot be run.
    /// </summary>
    void Apply(IReadOnlyList<SiteRecord> sites, bool bases, Action<IReadOnlyList<BaseChange>>? beforeBatch = null);

    /// <summary>The site's redirect target changed: what was computed for it (bytes, trampolines) is stale.</summary>
    void Forget(SiteRecord site);

    /// <summary>The ops ids in <paramref name="freed"/> will name other ops: forget what is keyed by them.</summary>
    void ForgetIds(ulong freed);

    /// <summary>Every site, to find ops still on one.</summary>
    IReadOnlyList<SiteRecord> Sites { get; }
}

/// <summary>
/// The ops and their sites (the kernel's ftrace_ops list and __ftrace_hash_rec_update): which ops
/// are registered, which sites each chose, the single-redirect rule (IPMODIFY) checked before
/// anything changes, small ids for ops sets, and every change made in one batch or not at all.
/// Pure bookkeeping: the bytes and the batch are the executor's.
/// </summary>
internal sealed class OpsRegistry(IOpsExecutor executor)
{
    /// <summary>The most ops a session holds at once: an ops set is a bit mask of their ids (bit 0 unused).</summary>
    public const int MaxIds = 63;

    private readonly List<Ops> _registered = [];
    private readonly Dictionary<Ops, List<SiteRecord>> _chosen = [];
    private readonly Dictionary<Ops, int> _ids = [];

    /// <summary>The registered ops, in registration order.</summary>
    public IReadOnlyList<Ops> Registered => _registered;

    public bool Contains(Ops ops) => _registered.Contains(ops);

    /// <summary>The sites <paramref name="ops"/> chose (or was given), created empty if it has none yet.</summary>
    public List<SiteRecord> ChosenBy(Ops ops) => _chosen.TryGetValue(ops, out List<SiteRecord>? c) ? c : _chosen[ops] = [];

    /// <summary>A site whose library was unloaded leaves every ops.</summary>
    public void Remove(SiteRecord site)
    {
        foreach (Ops o in site.Ops)
        {
            _chosen.GetValueOrDefault(o)?.Remove(site);
        }
        site.Ops.Clear();
    }

    /// <summary>
    /// Removes some ops and adds others in one batch: no call sees a state in between (a live
    /// patch replacing another never lets the original body run). Returns each added ops' sites.
    /// On any failure every site keeps the ops it had.
    /// </summary>
    public Dictionary<Ops, IReadOnlyList<SiteRecord>> Change(IReadOnlyList<Ops> remove, IReadOnlyList<Ops> add)
    {
        foreach (Ops ops in add)
        {
            if (_registered.Contains(ops) && !remove.Contains(ops))
            {
                throw new InvalidOperationException($"ops '{ops.Name}' is registered already");
            }
        }
        // The sites touched, each once (a set only when more than one ops is involved: one ops'
        // sites are distinct already), and what to undo: whole site lists, not a pair per site
        // (50,000 sites were several MB of garbage per toggle).
        var touched = new List<SiteRecord>();
        HashSet<SiteRecord>? seen = remove.Count + add.Count > 1 ? [] : null;
        void Touch(SiteRecord s)
        {
            if (seen is null || seen.Add(s))
            {
                touched.Add(s);
            }
        }
        var removedFrom = new List<(List<SiteRecord> Sites, Ops Ops)>();
        foreach (Ops ops in remove.Where(_registered.Contains))
        {
            IEnumerable<SiteRecord> from = _chosen.TryGetValue(ops, out List<SiteRecord>? c) ? c : executor.Sites;
            List<SiteRecord> had = from.Where(s => s.Ops.Contains(ops)).ToList();
            foreach (SiteRecord s in had)
            {
                s.Ops.Remove(ops);
                Touch(s);
            }
            removedFrom.Add((had, ops));
        }
        var result = new Dictionary<Ops, IReadOnlyList<SiteRecord>>();
        var addedTo = new List<(List<SiteRecord> Sites, Ops Ops)>();
        try
        {
            foreach (Ops ops in add)
            {
                List<SiteRecord> chosen = Choose(ops);
                if (ops.Redirects && chosen.FirstOrDefault(s => s.Ops.Any(o => o.Redirects)) is { } taken)
                {
                    Ops holder = taken.Ops.First(o => o.Redirects);
                    throw new HotwireException(
                        $"{taken.Function} is already redirected by '{holder.Name}': only one ops may change where a function goes; nothing was changed");
                }
                AssignId(ops);
                executor.Prepare(ops, chosen);
                addedTo.Add((chosen, ops));
                foreach (SiteRecord s in chosen)
                {
                    s.Ops.Add(ops);
                    Touch(s);
                }
                result[ops] = chosen;
            }
            executor.Apply(touched, bases: remove.Concat(add).Any(o => o.Persistent));
        }
        catch
        {
            foreach ((List<SiteRecord> sites, Ops o) in addedTo)
            {
                foreach (SiteRecord s in sites)
                {
                    s.Ops.Remove(o);
                }
            }
            foreach ((List<SiteRecord> sites, Ops o) in removedFrom)
            {
                foreach (SiteRecord s in sites)
                {
                    s.Ops.Add(o);
                }
            }
            TryApply(touched);
            throw;
        }
        foreach (Ops ops in remove)
        {
            _registered.Remove(ops);
        }
        _registered.AddRange(add);
        return result;
    }

    /// <summary>
    /// Takes over an ops a previous Hotwire left in place (a live patch) on <paramref name="sites"/>,
    /// which already hold its bytes: <paramref name="adopt"/> checks and records each one (nothing
    /// is written to the code). A site that fails leaves the ops off it and the exception goes on.
    /// </summary>
    public IReadOnlyList<SiteRecord> Adopt(Ops ops, IReadOnlyList<SiteRecord> sites, Action<SiteRecord> adopt)
    {
        List<SiteRecord> chosen = [.. sites];
        _chosen[ops] = chosen;
        AssignId(ops);
        executor.Prepare(ops, chosen);
        foreach (SiteRecord s in chosen)
        {
            s.Ops.Add(ops);
            try
            {
                adopt(s);
            }
            catch
            {
                s.Ops.Remove(ops);
                throw;
            }
        }
        _registered.Add(ops);
        return chosen;
    }

    /// <summary>
    /// Puts a redirecting ops on exactly <paramref name="sites"/> — where it may now send calls
    /// elsewhere than before — and takes it off the others, in one batch (a live patch stacked,
    /// reverted or replaced: no call sees a state in between).
    /// </summary>
    /// <param name="beforeBatch">called with the sites whose base (what detach and the dead-man
    /// switch restore) changes, before any byte changes: a live patch records its intent there.</param>
    public void SetSites(Ops ops, IReadOnlyCollection<SiteRecord> sites, Action<IReadOnlyList<BaseChange>>? beforeBatch = null)
    {
        if (sites.FirstOrDefault(s => s.Ops.Any(o => o != ops && o.Redirects)) is { } taken)
        {
            throw new HotwireException($"{taken.Function} is already redirected by '{taken.Ops.First(o => o != ops && o.Redirects).Name}'; nothing was changed");
        }
        AssignId(ops);
        var wanted = new HashSet<SiteRecord>(sites);
        var touched = new HashSet<SiteRecord>(_chosen.GetValueOrDefault(ops) ?? []);
        touched.UnionWith(sites);
        var before = touched.ToDictionary(s => s, s => s.Ops.ToList());
        foreach (SiteRecord s in touched)
        {
            s.Ops.Remove(ops);
            if (wanted.Contains(s))
            {
                s.Ops.Add(ops);
            }
            executor.Forget(s);
        }
        try
        {
            executor.Apply(touched.ToList(), bases: true, beforeBatch);
        }
        catch
        {
            foreach ((SiteRecord s, List<Ops> ops0) in before)
            {
                s.Ops.Clear();
                s.Ops.AddRange(ops0);
                executor.Forget(s);
            }
            TryApply(touched.ToList());
            throw;
        }
        _chosen[ops] = [.. sites];
        _registered.Remove(ops);
        if (wanted.Count > 0)
        {
            _registered.Add(ops);
        }
    }

    // Puts sites back to what their ops (restored by the caller) want, after a failed change; a
    // batch that fails again leaves them as they are (the first failure is the one reported).
    private void TryApply(List<SiteRecord> sites)
    {
        if (sites.Count == 0)
        {
            return;
        }
        try
        {
            executor.Apply(sites, bases: false);
        }
        catch (HotwireException)
        {
        }
    }

    // An ops' filters are fixed: choose its sites once, however often it is toggled.
    private List<SiteRecord> Choose(Ops ops)
    {
        if (!_chosen.TryGetValue(ops, out List<SiteRecord>? chosen))
        {
            chosen = executor.Select(ops);
            _chosen[ops] = chosen;
        }
        return chosen;
    }

    private void AssignId(Ops ops)
    {
        if (_ids.ContainsKey(ops))
        {
            return;
        }
        if (_ids.Count >= MaxIds)
        {
            ReclaimIds();
        }
        int id = Enumerable.Range(1, MaxIds).First(i => !_ids.ContainsValue(i));
        _ids[ops] = id;
        ops.Id = id;
    }

    // Ids are bits of the masks that key trampolines and cached bytes. Ops that are registered
    // nowhere give theirs back (only when ids run out: toggling an ops keeps its caches warm).
    private void ReclaimIds()
    {
        var idle = _ids.Keys.Where(o => !_registered.Contains(o) && !executor.Sites.Any(s => s.Ops.Contains(o))).ToList();
        if (idle.Count == 0)
        {
            throw new HotwireException($"a session holds at most {MaxIds} different ops at once");
        }
        ulong freed = 0;
        foreach (Ops o in idle)
        {
            freed |= 1UL << _ids[o];
            _ids.Remove(o);
            o.Id = 0;
        }
        executor.ForgetIds(freed);
    }
}
