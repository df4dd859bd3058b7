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

    private static string OptionName(ArgumentResult r) => r.Parent is OptionResult o ? o.Option.Name : r.Argument.Name;
}
