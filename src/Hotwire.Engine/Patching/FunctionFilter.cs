namespace Hotwire.Patching;

/// <summary>
/// A set of functions chosen by globs with ftrace's filter semantics: an empty filter selects
/// everything; a leading <c>!</c> removes what it matches; <c>GLOB:mod:MODULE</c> limits a glob to
/// modules whose file name matches MODULE.
/// </summary>
public sealed class FunctionFilter
{
    private readonly List<string> _patterns = [];
    private readonly List<Term> _include = [];
    private readonly List<Term> _exclude = [];

    // Plain names (no wildcard, no module) are looked up, not matched: a filter of thousands of
    // names over tens of thousands of sites stays linear.
    private readonly HashSet<string> _includeNames = new(StringComparer.Ordinal);
    private readonly HashSet<string> _excludeNames = new(StringComparer.Ordinal);
    private readonly List<Term> _includeGlobs = [];
    private readonly List<Term> _excludeGlobs = [];

    public FunctionFilter(IEnumerable<string> patterns)
    {
        foreach (string raw in patterns)
        {
            string pattern = raw.Trim();
            if (pattern.Length == 0)
            {
                continue;
            }
            _patterns.Add(raw);
            bool negate = pattern.StartsWith('!');
            Term term = Term.Parse(negate ? pattern[1..] : pattern, raw);
            (negate ? _exclude : _include).Add(term);
            if (term.IsPlainName)
            {
                (negate ? _excludeNames : _includeNames).Add(term.Function);
            }
            else
            {
                (negate ? _excludeGlobs : _includeGlobs).Add(term);
            }
        }
    }

    public bool IsEmpty => _include.Count == 0 && _exclude.Count == 0;

    public bool Matches(PatchSite site)
        => (_include.Count == 0 || _includeNames.Contains(site.Function) || _includeGlobs.Exists(t => t.Matches(site)))
            && !_excludeNames.Contains(site.Function) && !_excludeGlobs.Exists(t => t.Matches(site));

    /// <summary>
    /// The sites the filter selects. A pattern that matches no function at all is an error that
    /// names the closest function names, as a user who mistyped needs; so is a filter whose
    /// patterns each match but together select nothing (<c>!*</c>, or <c>f</c> and <c>!f</c>).
    /// </summary>
    public List<PatchSite> Select(IReadOnlyCollection<PatchSite> sites, IReadOnlySet<string>? functionNames = null)
    {
        if (IsEmpty)
        {
            return [.. sites]; // `hotwire ls` with no globs: no name set to build, no name to look up
        }
        IReadOnlySet<string>? names = functionNames; // built when a plain name needs it
        foreach (Term t in _include.Concat(_exclude))
        {
            bool matchesSome = t.IsPlainName
                ? (names ??= new HashSet<string>(sites.Select(s => s.Function), StringComparer.Ordinal)).Contains(t.Function)
                : sites.Any(t.Matches);
            if (!matchesSome)
            {
                throw new HotwireException(NoMatchMessage(t.Raw, sites));
            }
        }
        List<PatchSite> selected = sites.Where(Matches).ToList();
        if (selected.Count == 0 && !IsEmpty)
        {
            string all = string.Join(" and ", _patterns.Select(p => $"'{p}'"));
            throw new HotwireException($"no traceable function matches {all}{(_patterns.Count > 1 ? " together" : "")}; `hotwire ls` lists the functions that can be traced");
        }
        return selected;
    }

    private static string NoMatchMessage(string pattern, IReadOnlyCollection<PatchSite> sites)
    {
        string bare = pattern.TrimStart('!');
        int mod = bare.IndexOf(":mod:", StringComparison.Ordinal);
        if (mod >= 0)
        {
            string module = bare[(mod + 5)..];
            List<string> modules = sites.Select(s => s.ModuleName).Distinct().Order(StringComparer.Ordinal).ToList();
            if (module.Length > 0 && !modules.Any(m => Glob.IsMatch(module, m)))
            {
                // e.g. Debian's redis-server is a link: its module is the file it points to, redis-check-rdb
                return $"no traceable function matches '{pattern}': no module with functions is named '{module}' (modules: "
                    + string.Join(", ", modules.Take(8)) + (modules.Count > 8 ? ", …" : "") + ")";
            }
            bare = bare[..mod];
        }
        List<string> near = NearNames(bare, sites.Select(s => s.Function));
        string hint = near.Count > 0
            ? $"; near names: {string.Join(", ", near)}"
            : "; `hotwire ls` lists the functions that can be traced";
        return $"no traceable function matches '{pattern}'{hint}";
    }

    /// <summary>Up to five names containing the probe (glob characters left out) or a few edits away from it, nearest first.</summary>
    public static List<string> NearNames(string probe, IEnumerable<string> names)
    {
        string bare = new(probe.Where(c => c is not ('*' or '?' or '[' or ']')).ToArray());
        return names
            .Distinct()
            .Select(n => (Name: n, Score: n.Contains(bare, StringComparison.OrdinalIgnoreCase) ? 0 : Levenshtein(bare, n)))
            .Where(x => x.Score <= Math.Max(3, bare.Length / 2))
            .OrderBy(x => x.Score)
            .ThenBy(x => x.Name, StringComparer.Ordinal)
            .Take(5)
            .Select(x => x.Name)
            .ToList();
    }

    // Case-insensitive, two rows.
    private static int Levenshtein(string a, string b)
    {
        var prev = new int[b.Length + 1];
        var cur = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++)
        {
            prev[j] = j;
        }
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = char.ToLowerInvariant(a[i - 1]) == char.ToLowerInvariant(b[j - 1]) ? 0 : 1;
                cur[j] = Math.Min(Math.Min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + cost);
            }
            (prev, cur) = (cur, prev);
        }
        return prev[b.Length];
    }

    private sealed record Term(string Function, string? Module, string Raw)
    {
        public bool IsPlainName { get; } = Module is null && !Glob.HasWildcards(Function) && !Function.Contains('\\');

        public static Term Parse(string pattern, string raw)
        {
            int mod = pattern.IndexOf(":mod:", StringComparison.Ordinal);
            if (mod < 0)
            {
                return new Term(pattern, null, raw);
            }
            string function = pattern[..mod];
            return new Term(function.Length == 0 ? "*" : function, pattern[(mod + 5)..], raw);
        }

        public bool Matches(PatchSite site)
            => Glob.IsMatch(Function, site.Function) && (Module is null || Glob.IsMatch(Module, site.ModuleName));
    }
}
