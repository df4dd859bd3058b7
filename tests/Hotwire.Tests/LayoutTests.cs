using System.Runtime.InteropServices;
using Hotwire.Agent;
using Hotwire.Interop;
using Hotwire.Tests.Infrastructure;
using Xunit;

namespace Hotwire.Tests;

/// <summary>
/// The offsets Hotwire's generated code and P/Invoke use for kernel and libc structures, proven by
/// gcc: a C file of _Static_asserts built from the C# constants fails to compile if one is wrong.
/// </summary>
public class LayoutTests
{
    [Fact]
    public void Kernel_and_libc_struct_offsets_match_what_gcc_says()
    {
        string c = $$"""
            #define _GNU_SOURCE
            #include <poll.h>
            #include <signal.h>
            #include <stddef.h>
            #include <sys/user.h>
            #include <time.h>
            #include <ucontext.h>
            /* the kernel's struct for rt_sigaction(2) on x86-64 (not glibc's struct sigaction) */
            struct kernel_sigaction { void *handler; unsigned long flags; void *restorer; unsigned long mask; };
            _Static_assert(offsetof(ucontext_t, uc_mcontext.gregs[REG_RIP]) == {{AgentLayout.UcontextRip}}, "REG_RIP");
            _Static_assert(offsetof(ucontext_t, uc_mcontext.gregs[REG_RSP]) == {{AgentLayout.UcontextRsp}}, "REG_RSP");
            _Static_assert(sizeof(struct kernel_sigaction) == 32 && offsetof(struct kernel_sigaction, restorer) == 16, "kernel_sigaction");
            _Static_assert(SA_SIGINFO == {{AgentLayout.SA_SIGINFO}} && SA_ONSTACK == {{AgentLayout.SA_ONSTACK}} && SA_RESTART == {{AgentLayout.SA_RESTART}}, "SA_*");
            _Static_assert(0x04000000 == {{AgentLayout.SA_RESTORER}}, "SA_RESTORER (kernel uapi)");
            _Static_assert(sizeof(struct user_regs_struct) == {{Marshal.SizeOf<user_regs_struct>()}}, "user_regs_struct size");
            _Static_assert(offsetof(struct user_regs_struct, rip) == {{Marshal.OffsetOf<user_regs_struct>("rip")}}, "rip");
            _Static_assert(offsetof(struct user_regs_struct, orig_rax) == {{Marshal.OffsetOf<user_regs_struct>("orig_rax")}}, "orig_rax");
            _Static_assert(offsetof(struct user_regs_struct, rsp) == {{Marshal.OffsetOf<user_regs_struct>("rsp")}}, "rsp");
            _Static_assert(sizeof(struct pollfd) == 8 && offsetof(struct pollfd, events) == 4, "pollfd");
            _Static_assert(sizeof(struct timespec) == 16, "timespec");
            _Static_assert({{AgentLayout.WaitTimeout}} % 8 == 0 && {{AgentLayout.PollFd}} % 8 == 0, "alignment");
            int main(void) { return 0; }
            """;
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-layout-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "layout.c"), c);
        TargetBuilder.Run("gcc", "-fsyntax-only", Path.Combine(dir, "layout.c")); // throws with gcc's message on a mismatch
    }

    [Fact]
    public void Syscall_numbers_match_the_kernel_headers()
    {
        string c = $$"""
            #include <sys/syscall.h>
            _Static_assert(SYS_memfd_create == {{SyscallNumbers.memfd_create}}, "memfd_create");
            _Static_assert(SYS_membarrier == {{SyscallNumbers.membarrier}}, "membarrier");
            _Static_assert(SYS_pidfd_open == {{SyscallNumbers.pidfd_open}}, "pidfd_open");
            _Static_assert(SYS_rt_sigaction == {{SyscallNumbers.rt_sigaction}} && SYS_rt_sigreturn == {{SyscallNumbers.rt_sigreturn}}, "rt_sig*");
            _Static_assert(SYS_clone == {{SyscallNumbers.clone}} && SYS_futex == {{SyscallNumbers.futex}} && SYS_poll == {{SyscallNumbers.poll}}, "clone futex poll");
            _Static_assert(SYS_mprotect == {{SyscallNumbers.mprotect}} && SYS_mmap == {{SyscallNumbers.mmap}} && SYS_tgkill == {{SyscallNumbers.tgkill}}, "mm");
            _Static_assert(SYS_prctl == {{SyscallNumbers.prctl}} && SYS_gettid == {{SyscallNumbers.gettid}} && SYS_exit == {{SyscallNumbers.exit}}, "misc");
            int main(void) { return 0; }
            """;
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-layout-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "syscalls.c"), c);
        TargetBuilder.Run("gcc", "-fsyntax-only", Path.Combine(dir, "syscalls.c"));
    }
}
