namespace Hotwire.Interop;

internal static unsafe partial class Spawn
{
    [LibraryImport("libc")]
    public static partial int posix_spawn(int* pid, byte* path, void* fileActions, void* attr, byte** argv, byte** envp);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_init(void* fileActions);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_destroy(void* fileActions);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_addopen(void* fileActions, int fd, byte* path, int oflag, int mode);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_init(void* attr);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_destroy(void* attr);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setflags(void* attr, short flags);

    private const short POSIX_SPAWN_SETSID = 0x80;

    /// <summary>
    /// Starts a child with posix_spawn, so that .NET's Process class does not know it and never
    /// reaps it: only Hotwire waits for it (ptrace stops are reported through waitpid too).
    /// </summary>
    /// <param name="detached">in a session of its own (no terminal's signals), with stdin, stdout and stderr on /dev/null</param>
    public static int Start(string path, IReadOnlyList<string> argv, string? stdinPath, string? stdoutPath, bool detached = false)
    {
        if (detached)
        {
            stdinPath = "/dev/null";
            stdoutPath = "/dev/null";
        }
        var handles = new List<nint>();
        nint Utf8(string s)
        {
            nint p = Marshal.StringToCoTaskMemUTF8(s);
            handles.Add(p);
            return p;
        }
        try
        {
            var args = new nint[argv.Count + 1];
            for (int i = 0; i < argv.Count; i++)
            {
                args[i] = Utf8(argv[i]);
            }
            var env = Environment.GetEnvironmentVariables();
            var envp = new nint[env.Count + 1];
            int k = 0;
            foreach (System.Collections.DictionaryEntry e in env)
            {
                envp[k++] = Utf8($"{e.Key}={e.Value}");
            }
            byte* actions = stackalloc byte[256];
            posix_spawn_file_actions_init(actions);
            try
            {
                if (stdinPath is not null)
                {
                    posix_spawn_file_actions_addopen(actions, 0, (byte*)Utf8(stdinPath), Libc.O_RDONLY, 0);
                }
                if (stdoutPath is not null)
                {
                    posix_spawn_file_actions_addopen(actions, 1, (byte*)Utf8(stdoutPath), 0x41 | 0x200 /* O_WRONLY|O_CREAT|O_TRUNC */, 0x1a4);
                }
                if (detached)
                {
                    posix_spawn_file_actions_addopen(actions, 2, (byte*)Utf8("/dev/null"), 0x1 /* O_WRONLY */, 0);
                }
                byte* attr = stackalloc byte[512];   // posix_spawnattr_t is 336 bytes in glibc
                posix_spawnattr_init(attr);
                if (detached)
                {
                    posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSID);
                }
                int pid;
                fixed (nint* a = args)
                fixed (nint* e = envp)
                {
                    int r = posix_spawn(&pid, (byte*)Utf8(path), actions, attr, (byte**)a, (byte**)e);
                    posix_spawnattr_destroy(attr);
                    if (r != 0)
                    {
                        throw new HotwireException($"cannot start {argv[0]}: {Libc.StrError(r)}");
                    }
                }
                return pid;
            }
            finally
            {
                posix_spawn_file_actions_destroy(actions);
            }
        }
        finally
        {
            foreach (nint h in handles)
            {
                Marshal.FreeCoTaskMem(h);
            }
        }
    }
}
