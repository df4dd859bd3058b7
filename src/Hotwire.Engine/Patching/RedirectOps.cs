namespace Hotwire.Patching;

/// <summary>Sends every call of one function to another function already present in the target.</summary>
public sealed class RedirectOps : Ops
{
    private readonly ulong _target;

    public RedirectOps(string function, ulong target, string name = "redirect")
        : base(name, [function])
    {
        _target = target;
    }

    /// <summary>Where calls of the function go.</summary>
    public ulong Target => _target;

    public override bool Redirects => true;

    internal override ulong RedirectTarget(SiteRecord site) => _target;
}
