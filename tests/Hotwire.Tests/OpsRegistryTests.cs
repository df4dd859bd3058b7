namespace Hotwire.Tests;

/// <summary>
/// The ops registry without a process (the kernel's ftrace_ops list and __ftrace_hash_rec_update):
/// a fake executor records the batches it is asked for, and can fail one.
/// </summary>
public class OpsRegistryTests
{
    private sealed class FakeExecutor : IOpsExecutor
    {
        public FakeExecutor(params string[] functions)
        {
            var region = new CodeRegion(0x1000, 0x7000_0000, 0, 1 << 20);
            Sites = functions.Select((f, i) => new SiteRecord(i,
                new PatchSite(f, true, "/bin/app", 0x1000 + (ulong)i * 64, 0x1000 + (ulong)i * 64, SiteKind.Nop5, [0x0f, 0x1f, 0x44, 0, 0], false), region)).ToList();
        }

        public IReadOnlyList<SiteRecord> Sites { get; }

        public SiteRecord this[string function] => Sites.Single(s => s.Function == function);

        public List<(List<SiteRecord> Sites, bool Bases)> Batches { get; } = [];

        public List<SiteRecord> Forgotten { get; } = [];

        public ulong FreedIds { get; private set; }

        public bool FailNextBatch { get; set; }

        public List<SiteRecord> Select(Ops ops) => ops.SelectSites(Sites.Select(s => s.Site).ToList()).Select(p => Sites.Single(s => s.Site == p)).ToList();

        public void Prepare(Ops ops, IReadOnlyList<SiteRecord> sites)
        {
        }

        public void Apply(IReadOnlyList<SiteRecord> sites, bool bases, Action<IReadOnlyList<BaseChange>>? beforeBatch = null)
        {
            Batches.Add(([.. sites], bases));
            if (FailNextBatch)
            {
                FailNextBatch = false;
                throw new HotwireException("site of f holds cc1f440000: a breakpoint is there; nothing was changed");
            }
        }

        public void Forget(SiteRecord site) => Forgotten.Add(site);

        public void ForgetIds(ulong freed) => FreedIds |= freed;
    }

    /// <summary>A live patch's shape: it redirects and outlives the session.</summary>
    private sealed class PatchOps(string function) : Ops("patch", [function])
    {
        public override bool Redirects => true;

        public override bool Persistent => true;

        internal override ulong RedirectTarget(SiteRecord site) => 0x2000;
    }

    [Fact]
    public void A_second_redirect_of_a_function_is_refused_before_any_batch()
    {
        var x = new FakeExecutor("f", "g");
        var registry = new OpsRegistry(x);
        var first = new RedirectOps("f", 0x2000, "first");
        registry.Change([], [first]);

        var e = Assert.Throws<HotwireException>(() => registry.Change([], [new RedirectOps("f", 0x3000, "second")]));

        Assert.Contains("already redirected by 'first'", e.Message);
        Assert.Single(x.Batches);
        Assert.Equal([first], x["f"].Ops);
        Assert.Equal([first], registry.Registered);
    }

    [Fact]
    public void A_failed_batch_leaves_every_site_with_the_ops_it_had_and_asks_for_their_bytes_back()
    {
        var x = new FakeExecutor("f", "g");
        var registry = new OpsRegistry(x);
        var counter = new CountingOps(["*"]);
        registry.Change([], [counter]);
        x.FailNextBatch = true;

        Assert.Throws<HotwireException>(() => registry.Change([counter], [new RedirectOps("f", 0x2000)]));

        Assert.Equal([counter], x["f"].Ops);
        Assert.Equal([counter], x["g"].Ops);
        Assert.Equal([counter], registry.Registered);
        Assert.Equal(3, x.Batches.Count);   // register, the failed change, the undo
        Assert.Equal(x.Batches[1].Sites.ToHashSet(), x.Batches[2].Sites.ToHashSet());
    }

    [Fact]
    public void Replacing_one_ops_by_another_is_one_batch_touching_each_site_once()
    {
        var x = new FakeExecutor("f", "g", "h");
        var registry = new OpsRegistry(x);
        var before = new CountingOps(["f", "g"]);
        var after = new CountingOps(["g", "h"]);
        registry.Change([], [before]);

        registry.Change([before], [after]);

        (List<SiteRecord> sites, bool bases) = x.Batches[^1];
        Assert.Equal(2, x.Batches.Count);
        Assert.Equal(["f", "g", "h"], sites.Select(s => s.Function).Order());
        Assert.False(bases);
        Assert.Empty(x["f"].Ops);
        Assert.Equal([after], x["g"].Ops);
        Assert.Equal([after], registry.Registered);
    }

    [Fact]
    public void A_persistent_ops_changes_what_detach_restores_in_the_same_batch()
    {
        var x = new FakeExecutor("f", "g");
        var registry = new OpsRegistry(x);
        var tracer = new CountingOps(["*"]);
        registry.Change([], [tracer]);
        Assert.False(x.Batches[^1].Bases);

        registry.Change([], [new PatchOps("f")]);

        Assert.True(x.Batches[^1].Bases);
        Assert.Equal(["f"], x.Batches[^1].Sites.Select(s => s.Function));
    }

    [Fact]
    public void Moving_a_redirect_to_other_sites_is_one_batch_that_forgets_what_was_computed_for_them()
    {
        var x = new FakeExecutor("f", "g");
        var registry = new OpsRegistry(x);
        var patch = new PatchOps("f");
        registry.SetSites(patch, [x["f"]]);

        registry.SetSites(patch, [x["g"]]);

        Assert.Equal(["f", "g"], x.Batches[^1].Sites.Select(s => s.Function).Order());
        Assert.True(x.Batches[^1].Bases);
        Assert.Contains(x["f"], x.Forgotten);
        Assert.Contains(x["g"], x.Forgotten);
        Assert.Empty(x["f"].Ops);
        Assert.Equal([patch], x["g"].Ops);

        registry.SetSites(patch, []);   // reverted everywhere: no longer registered
        Assert.Empty(registry.Registered);
    }

    [Fact]
    public void Ids_of_ops_registered_nowhere_are_given_back_when_all_63_are_taken()
    {
        var x = new FakeExecutor("f");
        var registry = new OpsRegistry(x);
        var ids = new HashSet<int>();
        for (int i = 0; i < OpsRegistry.MaxIds; i++)
        {
            var ops = new CountingOps(["f"]);
            registry.Change([], [ops]);
            ids.Add(ops.Id);
            registry.Change([ops], []);
        }
        Assert.Equal(Enumerable.Range(1, OpsRegistry.MaxIds).ToHashSet(), ids);
        Assert.Equal(0UL, x.FreedIds);

        var next = new CountingOps(["f"]);
        registry.Change([], [next]);

        Assert.InRange(next.Id, 1, OpsRegistry.MaxIds);
        Assert.Equal(~1UL, x.FreedIds);   // every id 1..63: the caches keyed by them are stale
    }

    [Fact]
    public void A_64th_ops_held_at_once_is_refused_with_a_message()
    {
        var x = new FakeExecutor("f");
        var registry = new OpsRegistry(x);
        for (int i = 0; i < OpsRegistry.MaxIds; i++)
        {
            registry.Change([], [new CountingOps(["f"])]);
        }

        var e = Assert.Throws<HotwireException>(() => registry.Change([], [new CountingOps(["f"])]));

        Assert.Contains("at most 63 different ops", e.Message);
        Assert.Equal(OpsRegistry.MaxIds, x["f"].Ops.Count);
    }
}
