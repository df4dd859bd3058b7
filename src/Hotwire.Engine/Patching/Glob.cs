namespace Hotwire.Patching;

/// <summary>
/// Glob matching as ftrace's filter files do it (kernel/trace/trace.c <c>glob_match</c>): <c>*</c>,
/// <c>?</c> and <c>[...]</c> classes with ranges and <c>!</c>/<c>^</c> negation; no wildcard means an exact match.
/// </summary>
public static class Glob
{
    public static bool HasWildcards(string pattern) => pattern.AsSpan().IndexOfAny('*', '?', '[') >= 0;

    public static bool IsMatch(ReadOnlySpan<char> pattern, ReadOnlySpan<char> text)
    {
        // Iterative matcher with one backtrack point for the last '*': linear in practice.
        int p = 0, t = 0, starP = -1, starT = 0;
        while (t < text.Length)
        {
            if (p < pattern.Length)
            {
                char c = pattern[p];
                if (c == '*')
                {
                    starP = ++p;
                    starT = t;
                    continue;
                }
                if (c == '?')
                {
                    p++;
                    t++;
                    continue;
                }
                if (c == '[' && TryMatchClass(pattern, p, text[t], out int next, out bool matched))
                {
                    if (matched)
                    {
                        p = next;
                        t++;
                        continue;
                    }
                }
                else if (c == '\\' && p + 1 < pattern.Length && pattern[p + 1] == text[t])
                {
                    p += 2;
                    t++;
                    continue;
                }
                else if (c == text[t])
                {
                    p++;
                    t++;
                    continue;
                }
            }
            if (starP < 0)
            {
                return false;
            }
            p = starP;
            t = ++starT;
        }
        while (p < pattern.Length && pattern[p] == '*')
        {
            p++;
        }
        return p == pattern.Length;
    }

    // Returns false when the '[' does not open a well-formed class (then it matches itself).
    private static bool TryMatchClass(ReadOnlySpan<char> pattern, int open, char ch, out int next, out bool matched)
    {
        int i = open + 1;
        bool negate = i < pattern.Length && (pattern[i] == '!' || pattern[i] == '^');
        if (negate)
        {
            i++;
        }
        bool any = false;
        bool first = true;
        while (i < pattern.Length && (pattern[i] != ']' || first))
        {
            char lo = pattern[i];
            char hi = lo;
            if (i + 2 < pattern.Length && pattern[i + 1] == '-' && pattern[i + 2] != ']')
            {
                hi = pattern[i + 2];
                i += 2;
            }
            any |= ch >= lo && ch <= hi;
            i++;
            first = false;
        }
        if (i >= pattern.Length)
        {
            next = open;
            matched = false;
            return false;
        }
        next = i + 1;
        matched = any != negate;
        return true;
    }
}
