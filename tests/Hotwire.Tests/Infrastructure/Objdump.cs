using System.Globalization;
using System.Text.RegularExpressions;

namespace Hotwire.Tests.Infrastructure;

public sealed record ExpectedSite(string Name, ulong Address, string Kind);

/// <summary>
/// The sites a binary has according to binutils (objdump -d, demangled), computed independently of
/// Hotwire's ELF reader: a function whose first instruction (after endbr64) is a NOP5, a sled of
/// five 1-byte NOPs or a call to __fentry__.
/// </summary>
public static partial class Objdump
{
    [GeneratedRegex(@"^([0-9a-f]+) <(.+)>:$")]
    private static partial Regex Header();

    [GeneratedRegex(@"^\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(.*)$")]
    private static partial Regex Instruction();

    public static List<ExpectedSite> Sites(string binary)
    {
        string text = TargetBuilder.Run("objdump", "-d", "-w", "-C", binary);
        var result = new List<ExpectedSite>();
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            Match h = Header().Match(lines[i]);
            if (!h.Success)
            {
                continue;
            }
            var insns = new List<(ulong Address, string Bytes, string Text)>();
            for (int j = i + 1; j < lines.Length && insns.Count < 7; j++)
            {
                Match m = Instruction().Match(lines[j]);
                if (!m.Success)
                {
                    break;
                }
                insns.Add((ulong.Parse(m.Groups[1].Value, NumberStyles.HexNumber), m.Groups[2].Value.Trim(), m.Groups[3].Value));
            }
            int k = insns.Count > 0 && insns[0].Bytes == "f3 0f 1e fa" ? 1 : 0;
            if (k >= insns.Count)
            {
                continue;
            }
            string? kind = null;
            var first = insns[k];
            if (first.Bytes == "0f 1f 44 00 00")
            {
                kind = "nop5";
            }
            else if (insns.Count >= k + 5 && insns.Skip(k).Take(5).All(x => x.Bytes == "90"))
            {
                kind = "nop1x5";
            }
            else if (first.Bytes.StartsWith("ff 15", StringComparison.Ordinal) && first.Text.Contains("__fentry__", StringComparison.Ordinal))
            {
                kind = "fentry*";
            }
            else if (first.Bytes.StartsWith("e8", StringComparison.Ordinal) && first.Text.Contains("<__fentry__", StringComparison.Ordinal))
            {
                kind = "fentry";
            }
            if (kind is not null)
            {
                result.Add(new ExpectedSite(h.Groups[2].Value, first.Address, kind));
            }
        }
        return result;
    }

    /// <summary>Parses `hotwire ls --addrs` lines: "ADDR KIND NAME [MODULE]".</summary>
    public static List<(ExpectedSite Site, string Module)> ParseLs(IEnumerable<string> lines)
    {
        var result = new List<(ExpectedSite, string)>();
        foreach (string line in lines)
        {
            int space1 = line.IndexOf(' ');
            string rest = line[(space1 + 1)..].TrimStart();
            int space2 = rest.IndexOf(' ');
            string kind = rest[..space2];
            string nameAndModule = rest[(space2 + 1)..].TrimStart();
            int bracket = nameAndModule.LastIndexOf(" [", StringComparison.Ordinal);
            string name = nameAndModule[..bracket];
            string module = nameAndModule[(bracket + 2)..^1];
            result.Add((new ExpectedSite(name, ulong.Parse(line[..space1], NumberStyles.HexNumber), kind), module));
        }
        return result;
    }

    /// <summary>Where /proc/PID/maps says the file's first page (offset 0) is mapped.</summary>
    public static ulong MappedBase(int pid, string path)
    {
        string full = Path.GetFullPath(path);
        foreach (string line in File.ReadAllLines($"/proc/{pid}/maps"))
        {
            string[] f = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (f.Length == 6 && f[5].Trim() == full && f[2] == "00000000")
            {
                return ulong.Parse(f[0].Split('-')[0], NumberStyles.HexNumber);
            }
        }
        throw new InvalidOperationException($"{full} is not mapped in {pid}");
    }
}
