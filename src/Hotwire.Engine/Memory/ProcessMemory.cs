namespace Hotwire.Memory;

/// <summary>A live process's address space through <c>/proc/PID/mem</c> (pread/pwrite, no stop needed).</summary>
public sealed class ProcessMemory : IMemoryReader, IDisposable
{
    private readonly SafeFd _fd;

    private ProcessMemory(int pid, SafeFd fd)
    {
        Pid = pid;
        _fd = fd;
    }

    public int Pid { get; }

    internal int Fd => _fd.Fd;

    public static ProcessMemory Open(int pid, bool writable = false)
    {
        int fd = Libc.open($"/proc/{pid}/mem", (writable ? Libc.O_RDWR : Libc.O_RDONLY) | Libc.O_CLOEXEC, 0);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw Errors.FromErrno("open /proc/PID/mem", errno, pid);
        }
        return new ProcessMemory(pid, new SafeFd(fd));
    }

    public unsafe bool TryRead(ulong address, Span<byte> destination)
    {
        fixed (byte* p = destination)
        {
            int done = 0;
            while (done < destination.Length)
            {
                nint n = Libc.pread(_fd.Fd, p + done, (nuint)(destination.Length - done), (long)(address + (ulong)done));
                if (n < 0 && Marshal.GetLastPInvokeError() == Libc.EINTR)
                {
                    continue;
                }
                if (n <= 0)
                {
                    return false;
                }
                done += (int)n;
            }
        }
        return true;
    }

    /// <summary>Writes through /proc/PID/mem (for a stopped thread's code: not atomic for running ones).</summary>
    public unsafe void Write(ulong address, ReadOnlySpan<byte> bytes)
    {
        fixed (byte* p = bytes)
        {
            nint n;
            do
            {
                n = Libc.pwrite(_fd.Fd, p, (nuint)bytes.Length, (long)address);
            }
            while (n < 0 && Marshal.GetLastPInvokeError() == Libc.EINTR);
            if (n != bytes.Length)
            {
                throw new HotwireException($"cannot write {bytes.Length} bytes at 0x{address:x} in pid {Pid}: {Libc.StrError(Marshal.GetLastPInvokeError())}");
            }
        }
    }

    public void Dispose() => _fd.Dispose();
}
