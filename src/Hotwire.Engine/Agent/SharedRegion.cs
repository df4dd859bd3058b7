namespace Hotwire.Agent;

/// <summary>Hotwire's own RW mapping of the memfd it shares with the target.</summary>
public sealed unsafe class SharedRegion : SafeHandle
{
    private SharedRegion(nint address, ulong length) : base(0, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
    }

    public ulong Length { get; }

    public byte* Pointer => (byte*)handle;

    public override bool IsInvalid => handle == 0 || handle == -1;

    /// <summary>Private anonymous memory of Hotwire's own, laid out like the shared region: a staging area.</summary>
    public static SharedRegion Anonymous(ulong length)
    {
        nint p = Sys.mmap(0, (nuint)length, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_PRIVATE | Sys.MAP_ANONYMOUS, -1, 0);
        if (p == -1)
        {
            throw Errors.FromErrno("mmap (staging)", Marshal.GetLastPInvokeError(), Environment.ProcessId);
        }
        return new SharedRegion(p, length);
    }

    /// <summary>Maps the target's memfd, found through /proc/PID/fd.</summary>
    public static SharedRegion MapTargetFd(int pid, int targetFd, ulong length)
    {
        int fd = Libc.open($"/proc/{pid}/fd/{targetFd}", Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        if (fd < 0)
        {
            throw Errors.FromErrno("open /proc/PID/fd (agent memory)", Marshal.GetLastPInvokeError(), pid);
        }
        try
        {
            nint p = Sys.mmap(0, (nuint)length, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_SHARED, fd, 0);
            if (p == -1)
            {
                throw Errors.FromErrno("mmap (agent memory)", Marshal.GetLastPInvokeError(), pid);
            }
            return new SharedRegion(p, length);
        }
        finally
        {
            Libc.close(fd);
        }
    }

    public ref T At<T>(ulong offset) where T : unmanaged
    {
        if (offset + (ulong)sizeof(T) > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset));
        }
        return ref *(T*)(Pointer + offset);
    }

    public ulong ReadU64(ulong offset) => Volatile.Read(ref At<ulong>(offset));

    public void WriteU64(ulong offset, ulong value) => Volatile.Write(ref At<ulong>(offset), value);

    public uint ReadU32(ulong offset) => Volatile.Read(ref At<uint>(offset));

    public void WriteU32(ulong offset, uint value) => Volatile.Write(ref At<uint>(offset), value);

    public Span<byte> Bytes(ulong offset, int length)
    {
        if (offset + (ulong)length > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset));
        }
        return new Span<byte>(Pointer + offset, length);
    }

    protected override bool ReleaseHandle() => Sys.munmap(handle, (nuint)Length) == 0;
}
