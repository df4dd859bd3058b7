namespace Hotwire.Interop;

/// <summary>An owned file descriptor.</summary>
public sealed class SafeFd : SafeHandle
{
    public SafeFd(int fd) : base(-1, ownsHandle: true) => SetHandle(fd);

    public override bool IsInvalid => handle < 0;

    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Libc.close((int)handle) == 0;
}
