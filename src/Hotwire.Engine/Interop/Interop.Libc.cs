namespace Hotwire.Interop;

/// <summary>libc entry points used across Hotwire. One place, as in dotnet/runtime's Interop classes.</summary>
internal static partial class Libc
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int ESRCH = 3;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EINVAL = 22;

    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_CLOEXEC = 0x80000;

    /// <summary>The file type bits (S_IFMT) of <paramref name="path"/>, following links; -1 with errno set when stat fails.</summary>
    public static unsafe int FileType(string path)
    {
        byte* st = stackalloc byte[256];   // struct stat is 144 bytes on x86-64; st_mode is at 24
        return stat(path, st) == 0 ? (int)(*(uint*)(st + 24) & 0xf000) : -1;
    }

    /// <summary>The inode number of <paramref name="path"/>, following links; 0 when stat fails.</summary>
    public static unsafe ulong Inode(string path)
    {
        byte* st = stackalloc byte[256];   // st_ino is at 8
        return stat(path, st) == 0 ? *(ulong*)(st + 8) : 0;
    }

    public const int S_IFREG = 0x8000, S_IFDIR = 0x4000, S_IFCHR = 0x2000, S_IFBLK = 0x6000, S_IFIFO = 0x1000, S_IFSOCK = 0xc000;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int stat(string path, byte* buf);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string pathname, int flags, int mode);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static unsafe partial nint pread(int fd, void* buf, nuint count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static unsafe partial nint pwrite(int fd, void* buf, nuint count, long offset);

    [LibraryImport("libc")]
    public static unsafe partial void free(void* ptr);

    [LibraryImport("libc")]
    public static partial int getpid();

    [LibraryImport("libc")]
    public static partial uint geteuid();

    [LibraryImport("libc")]
    public static unsafe partial byte* strerror(int errnum);

    public static unsafe string StrError(int errno)
        => Marshal.PtrToStringUTF8((nint)strerror(errno)) ?? $"errno {errno}";
}
