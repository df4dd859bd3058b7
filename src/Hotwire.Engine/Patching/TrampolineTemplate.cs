using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Patching;

/// <summary>
/// The code of a trampoline for one set of ops (the kernel's create_trampoline copies
/// ftrace_caller and patches its ops pointer; here each ops' entry code is inlined in order,
/// then a <c>ret</c>, or for a redirect <c>lea rsp,[rsp+8]; jmp [target]</c>), assembled once per
/// set with sentinel values in place of the site-dependent immediates; each site's copy gets its
/// own values written where the sentinels were (<see cref="Fixups"/>).
/// </summary>
internal sealed class TrampolineTemplate
{
    private const ulong SentinelBase = 0x5a17_c0de_0000_0000;

    private TrampolineTemplate(byte[] code, List<Fixup> fixups)
    {
        Code = code;
        Fixups = fixups;
    }

    public byte[] Code { get; }

    /// <summary>Where a site's own value goes in <see cref="Code"/>: an ops' parameter, or a redirect's target.</summary>
    public readonly record struct Fixup(int Offset, Ops Ops, int Parameter)
    {
        public const int RedirectTarget = -1;

        /// <summary>The value this fixup takes for <paramref name="site"/>.</summary>
        public ulong ValueFor(SiteRecord site) => Parameter == RedirectTarget ? Ops.RedirectTarget(site) : Ops.Parameter(site, Parameter);
    }

    public List<Fixup> Fixups { get; }

    public static TrampolineTemplate Build(IReadOnlyList<Ops> ops)
    {
        var a = new Assembler(64);
        var sentinels = new List<(ulong Value, Ops Ops, int Parameter)>();
        ulong next = SentinelBase;
        Ops? redirect = null;
        foreach (Ops o in ops)
        {
            if (o.Redirects)
            {
                redirect = o;
                continue;
            }
            var parameters = new ulong[o.ParameterCount];
            for (int i = 0; i < parameters.Length; i++)
            {
                parameters[i] = next;
                sentinels.Add((next++, o, i));
            }
            o.EmitEntry(a, parameters);
        }
        if (redirect is not null)
        {
            // Drop our return slot and go, through a literal: no register changed (Preserved).
            Label target = a.CreateLabel();
            a.lea(rsp, __[rsp + 8]);
            a.jmp(__qword_ptr[target]);
            a.Label(ref target);
            a.dq(next);
            sentinels.Add((next, redirect, Fixup.RedirectTarget));
        }
        else
        {
            a.ret();
        }
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), 0);
        byte[] code = stream.ToArray();
        var fixups = new List<Fixup>();
        foreach ((ulong value, Ops o, int parameter) in sentinels)
        {
            int at = IndexOf(code, value);
            if (at < 0 || IndexOf(code.AsSpan(at + 1).ToArray(), value) >= 0)
            {
                throw new InvalidOperationException($"ops '{o.Name}' must use each parameter once, as a 64-bit immediate");
            }
            fixups.Add(new Fixup(at, o, parameter));
        }
        return new TrampolineTemplate(code, fixups);
    }

    private static int IndexOf(byte[] code, ulong value)
    {
        Span<byte> pattern = stackalloc byte[8];
        BitConverter.TryWriteBytes(pattern, value);
        return code.AsSpan().IndexOf(pattern);
    }
}
