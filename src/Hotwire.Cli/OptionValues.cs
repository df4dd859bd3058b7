using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace Hotwire.Cli;

/// <summary>
/// Option values in the user's words, parsed in one place for every command: a bad value reads
/// "--pid: 'x' is not a whole number", never a .NET type name.
/// </summary>
public static class OptionValues
{
    /// <summary>No option takes a longer time: beyond it a value is a slip (1e300), not a plan.</summary>
    public static readonly TimeSpan LongestTime = TimeSpan.FromDays(365);

    private static readonly (string Unit, double Ns)[] s_units = [("ns", 1), ("us", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)];

    /// <summary>Gives every whole-number option under <paramref name="command"/> that has no parser of its own one with a plain message.</summary>
    public static void Humanize(Command command)
    {
        foreach (Option option in command.Options)
        {
            switch (option)
            {
                case Option<int> o when o.CustomParser is null:
                    o.CustomParser = r => WholeNumber(r) ?? 0;
                    break;
                case Option<int?> o when o.CustomParser is null:
                    o.CustomParser = WholeNumber;
                    break;
            }
        }
        foreach (Command sub in command.Subcommands)
        {
            Humanize(sub);
        }
    }

    public static int? WholeNumber(ArgumentResult r)
    {
        if (r.Tokens.Count == 0)
        {
            return null;
        }
        string text = r.Tokens[0].Value;
        if (!int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int n))
        {
            r.AddError($"{OptionName(r)}: '{text}' is not a whole number");
            return null;
        }
        return n;
    }

    /// <summary>A --pid: a positive whole number.</summary>
    public static int? ProcessId(ArgumentResult r)
    {
        int? pid = WholeNumber(r);
        if (pid is <= 0)
        {
            r.AddError($"{OptionName(r)}: '{r.Tokens[0].Value}' is not a process id: give the positive number ps shows");
            return null;
        }
        return pid;
    }

    /// <summary>An option that takes a time, a bare number being seconds (--duration, --wait-quiescent).</summary>
    public static Option<TimeSpan?> Seconds(string name, string description, params string[] aliases) => new(name, aliases)
    {
        Description = $"{description}: seconds (1.5), or with a unit (500ms, 30s, 2m)",
        HelpName = "SECONDS",
        CustomParser = r =>
        {
            if (r.Tokens.Count == 0)
            {
                return null;
            }
            if (!TryParseTimeNs(r.Tokens[0].Value, OptionName(r), "s", out long ns, out string? error))
            {
                r.AddError(error);
                return null;
            }
            return TimeSpan.FromTicks(Math.Max(1, ns / TimeSpan.NanosecondsPerTick));
        },
    };

    /// <summary>
    /// A time as a number and a unit (500ns, 10us, 1.5ms, 2s, 1m, 1h); a bare number is in
    /// <paramref name="bareUnit"/>. Refuses what is not a positive, finite time of at most
    /// <see cref="LongestTime"/>.
    /// </summary>
    public static bool TryParseTimeNs(string text, string option, string bareUnit, out long ns, [System.Diagnostics.CodeAnalysis.NotNullWhen(false)] out string? error)
    {
        ns = 0;
        string t = text.Trim().ToLowerInvariant();
        (string unit, double scale) = s_units.OrderByDescending(u => u.Unit.Length).FirstOrDefault(u => t.EndsWith(u.Unit, StringComparison.Ordinal) && t.Length > u.Unit.Length);
        if (unit is null)
        {
            scale = s_units.First(u => u.Unit == bareUnit).Ns;
        }
        string number = unit is null ? t : t[..^unit.Length];
        string examples = bareUnit == "s" ? "examples: 30 (seconds), 1.5, 500ms, 2m" : "examples: 500ns, 10us, 1.5ms, 2s";
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double n) || double.IsNaN(n))
        {
            error = $"{option}: '{text}' is not a time ({examples})";
            return false;
        }
        double total = n * scale;
        if (total > LongestTime.TotalNanoseconds)
        {
            error = $"{option}: '{text}' is longer than a year, the most it takes ({examples})";
            return false;
        }
        if (Math.Round(total) < 1)
        {
            error = $"{option}: '{text}' is not a positive time ({examples})";
            return false;
        }
        ns = (long)Math.Round(total);
        error = null;
        return true;
    }

    public static long ParseTimeNs(string text, string option, string bareUnit)
        => TryParseTimeNs(text, option, bareUnit, out long ns, out string? error) ? ns : throw new UsageException(error);

    private static string OptionName(ArgumentResult r) => r.Parent is OptionResult o ? o.Option.Name : r.Argument.Name;
}
