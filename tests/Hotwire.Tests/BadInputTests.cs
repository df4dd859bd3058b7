namespace Hotwire.Tests;

/// <summary>Every anticipated bad input gets one clear line on stderr and a non-zero exit, never a stack trace.</summary>
public class BadInputTests
{
    [Fact]
    public void A_path_that_does_not_exist()
        => AssertOneLineError(HotwireCli.Run("ls", "/nonexistent/prog"), "/nonexistent/prog: no such file");

    [Fact]
    public void Ls_of_a_device_a_fifo_a_directory_or_a_socket_is_refused_without_reading_it()
    {
        // A FIFO nobody writes, or /dev/zero, would block or never end if opened: stat decides.
        string dir = Directory.CreateTempSubdirectory("hotwire-ls-").FullName;
        string fifo = Path.Combine(dir, "fifo"), sock = Path.Combine(dir, "sock");
        using (Process mkfifo = Process.Start("mkfifo", fifo)!)
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }
        using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(sock));
        AssertOneLineError(HotwireCli.Run(TimeSpan.FromSeconds(20), "ls", "/dev/zero"), "/dev/zero is a character device, not a program or shared library");
        AssertOneLineError(HotwireCli.Run(TimeSpan.FromSeconds(20), "ls", fifo), $"{fifo} is a named pipe (FIFO), not a program or shared library");
        AssertOneLineError(HotwireCli.Run(TimeSpan.FromSeconds(20), "ls", dir), $"{dir} is a directory, not a program or shared library");
        AssertOneLineError(HotwireCli.Run(TimeSpan.FromSeconds(20), "ls", sock), $"{sock} is a socket, not a program or shared library");
    }

    [Fact]
    public void A_file_that_is_not_elf()
        => AssertOneLineError(HotwireCli.Run("ls", Path.Combine(TargetBuilder.SourceDir, "flavours.c")), "is not an ELF file");

    [Fact]
    public void An_elf_for_another_machine()
    {
        string copy = PatchedCopy(TargetBuilder.Get(Flavour.Nop5), "aarch64", bytes => { bytes[18] = 183; bytes[19] = 0; });
        AssertOneLineError(HotwireCli.Run("ls", copy), "is an ELF file for AArch64 (ARM64), not x86-64");
    }

    [Fact]
    public void A_32_bit_elf()
    {
        string copy = PatchedCopy(TargetBuilder.Get(Flavour.Nop5), "elf32", bytes => { bytes[4] = 1; bytes[18] = 3; });
        AssertOneLineError(HotwireCli.Run("ls", copy), "is a 32-bit ELF file; Hotwire supports 64-bit x86-64 programs only");
    }

    [Fact]
    public void An_elf_with_no_patch_sites_says_which_flags_add_them()
        => AssertOneLineError(HotwireCli.Run("ls", TargetBuilder.Get(Flavour.NoSites)), "has no patch sites: compile with -fpatchable-function-entry=5");

    [Fact]
    public void A_running_process_with_no_patch_sites()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.NoSites));
        AssertOneLineError(HotwireCli.Run("ls", "--pid", target.Pid.ToString()), $"pid {target.Pid} has no patch sites");
    }

    [Fact]
    public void A_stripped_binary_lists_sites_by_address_and_says_symbols_are_missing()
    {
        string stripped = TargetBuilder.Get(Flavour.Stripped);
        CliResult result = HotwireCli.Run("ls", "--addrs", stripped);
        Assert.Equal(0, result.ExitCode);
        Assert.Contains("has no symbol table (stripped)", result.Stderr);
        Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        // Same layout as the unstripped build: every site is there, named by its address.
        var expected = Objdump.Sites(TargetBuilder.Get(Flavour.Nop5)).Select(s => new ExpectedSite($"0x{s.Address:x}", s.Address, s.Kind));
        Assert.Equal(expected.OrderBy(s => s.Address), Objdump.ParseLs(result.Lines).Select(x => x.Site).OrderBy(s => s.Address));
    }

    [Fact]
    public void A_pid_that_does_not_exist()
    {
        int pid = UnusedPid();
        AssertOneLineError(HotwireCli.Run("ls", "--pid", pid.ToString()), $"no process with pid {pid}");
    }

    [Fact]
    public void A_pid_we_may_not_read()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        // Run hotwire as an unprivileged user against a root-owned process.
        var psi = new ProcessStartInfo("setpriv") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", HotwireCli.ExecutablePath, "ls", "--pid", target.Pid.ToString() })
        {
            psi.ArgumentList.Add(a);
        }
        // Needs root to switch to another user (as on this project's machines and in CI): without
        // it setpriv fails and so does this test, rather than passing without checking anything.
        using Process p = Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        AssertOneLineError(new CliResult(p.ExitCode, stdout, stderr), "permission denied");
        Assert.Contains("CAP_SYS_PTRACE", stderr);
    }

    [Fact]
    public void A_glob_that_matches_nothing_names_near_functions()
    {
        CliResult result = HotwireCli.Run("ls", TargetBuilder.Get(Flavour.Nop5), "compte");
        AssertOneLineError(result, "no traceable function matches 'compte'; near names: compute");
    }

    [Fact]
    public void No_file_and_no_pid()
        => AssertOneLineError(HotwireCli.Run("ls"), "give a program or shared library to list");

    [Fact]
    public void An_unknown_option_is_a_usage_error()
    {
        CliResult result = HotwireCli.Run("ls", "--bogus", TargetBuilder.Get(Flavour.Nop5));
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("unknown option --bogus", result.Stderr);
    }

    private static void AssertOneLineError(CliResult result, string expected)
    {
        Assert.NotEqual(0, result.ExitCode);
        Assert.Equal("", result.Stdout);
        string[] lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got: {result.Stderr}");
        Assert.StartsWith("hotwire: ", lines[0]);
        Assert.Contains(expected, lines[0]);
    }

    private static string PatchedCopy(string source, string suffix, Action<byte[]> patch)
    {
        byte[] bytes = File.ReadAllBytes(source);
        patch(bytes);
        string path = Path.Combine(Path.GetTempPath(), $"hotwire-test-{suffix}-{Environment.ProcessId}");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static int UnusedPid()
    {
        int max = int.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim());
        for (int pid = max - 1; pid > 1; pid--)
        {
            if (!Directory.Exists($"/proc/{pid}"))
            {
                return pid;
            }
        }
        throw new InvalidOperationException("no free pid");
    }
}
