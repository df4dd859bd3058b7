using System.Runtime.InteropServices;
using Hotwire.Agent;
using Hotwire.Interop;

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
        AssertCompiles("layout", c);
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
            _Static_assert(SYS_madvise == {{SyscallNumbers.madvise}} && SYS_ftruncate == {{SyscallNumbers.ftruncate}} && SYS_munmap == {{SyscallNumbers.munmap}}, "madvise ftruncate munmap");
            _Static_assert(SYS_prctl == {{SyscallNumbers.prctl}} && SYS_gettid == {{SyscallNumbers.gettid}} && SYS_exit == {{SyscallNumbers.exit}}, "misc");
            int main(void) { return 0; }
            """;
        AssertCompiles("syscalls", c);
    }

    /// <summary>
    /// The structures Hotwire writes and its generated agent reads, written once in C: every C#
    /// definition of them (AgentLayout's offsets, the batch slot struct) must agree with it.
    /// </summary>
    [Fact]
    public void Structures_shared_with_the_agent_match_one_C_definition()
    {
        string c = $$"""
            #include <stddef.h>
            #include <stdint.h>
            /* site bytes: up to 16, zero-padded (SiteBytes), 8-aligned */
            typedef struct { _Alignas(8) uint8_t b[{{SiteBytes.MaxLength}}]; } site_bytes;
            struct site_entry { uint64_t address, emu; site_bytes original, current; uint8_t len; uint64_t base_emu; };
            struct batch_entry { uint32_t site_index; site_bytes expected, new_bytes; uint64_t emu; };
            struct base_entry { uint32_t site_index; site_bytes bytes; uint64_t emu; };
            struct emulation_record { uint8_t kind, advance; uint64_t target; };
            struct region_entry { uint64_t module_start, address, size, memfd_offset, used; };
            _Static_assert(sizeof(struct site_entry) == {{AgentLayout.SiteEntrySize}}, "site entry size");
            _Static_assert(offsetof(struct site_entry, address) == {{AgentLayout.SiteAddress}} && offsetof(struct site_entry, emu) == {{AgentLayout.SiteEmu}}, "site address, emu");
            _Static_assert(offsetof(struct site_entry, original) == {{AgentLayout.SiteOriginal}} && offsetof(struct site_entry, current) == {{AgentLayout.SiteCurrent}}, "site bytes");
            _Static_assert(offsetof(struct site_entry, len) == {{AgentLayout.SiteLen}} && offsetof(struct site_entry, base_emu) == {{AgentLayout.SiteBaseEmu}}, "site len, base");
            _Static_assert(sizeof(site_bytes) == {{Marshal.SizeOf<SiteBytes>()}}, "SiteBytes");
            _Static_assert(sizeof(struct batch_entry) == {{AgentLayout.BatchEntrySize}} && sizeof(struct batch_entry) == {{Marshal.SizeOf<BatchSlot>()}}, "batch entry size");
            _Static_assert(offsetof(struct batch_entry, site_index) == {{AgentLayout.BatchSiteIndex}} && offsetof(struct batch_entry, site_index) == {{Marshal.OffsetOf<BatchSlot>("SiteIndex")}}, "batch site");
            _Static_assert(offsetof(struct batch_entry, expected) == {{AgentLayout.BatchExpected}} && offsetof(struct batch_entry, expected) == {{Marshal.OffsetOf<BatchSlot>("Expected")}}, "batch expected");
            _Static_assert(offsetof(struct batch_entry, new_bytes) == {{AgentLayout.BatchNew}} && offsetof(struct batch_entry, new_bytes) == {{Marshal.OffsetOf<BatchSlot>("New")}}, "batch new");
            _Static_assert(offsetof(struct batch_entry, emu) == {{AgentLayout.BatchEmu}} && offsetof(struct batch_entry, emu) == {{Marshal.OffsetOf<BatchSlot>("Emu")}}, "batch emu");
            _Static_assert(sizeof(struct base_entry) == {{AgentLayout.BaseEntrySize}} && offsetof(struct base_entry, site_index) == {{AgentLayout.BaseSiteIndex}}, "base entry");
            _Static_assert(offsetof(struct base_entry, bytes) == {{AgentLayout.BaseBytes}} && offsetof(struct base_entry, emu) == {{AgentLayout.BaseEmu}}, "base fields");
            _Static_assert(sizeof(struct emulation_record) == {{AgentLayout.RecordSize}} && offsetof(struct emulation_record, kind) == {{AgentLayout.RecordKind}}, "record");
            _Static_assert(offsetof(struct emulation_record, advance) == {{AgentLayout.RecordAdvance}} && offsetof(struct emulation_record, target) == {{AgentLayout.RecordTarget}}, "record fields");
            _Static_assert(sizeof(struct region_entry) == {{AgentLayout.RegionEntrySize}} && offsetof(struct region_entry, module_start) == {{AgentLayout.RegionModuleStart}}, "region entry");
            _Static_assert(offsetof(struct region_entry, address) == {{AgentLayout.RegionAddress}} && offsetof(struct region_entry, size) == {{AgentLayout.RegionSize}}, "region address, size");
            _Static_assert(offsetof(struct region_entry, memfd_offset) == {{AgentLayout.RegionMemfdOffset}} && offsetof(struct region_entry, used) == {{AgentLayout.RegionUsed}}, "region memfd offset, used");
            int main(void) { return 0; }
            """;
        AssertCompiles("agent", c);
    }

    [Fact]
    public void Native_constants_match_the_C_headers()
    {
        string c = $$"""
            #define _GNU_SOURCE
            #include <elf.h>
            #include <linux/membarrier.h>
            #include <sched.h>
            #include <sys/mman.h>
            _Static_assert(PROT_READ == {{Sys.PROT_READ}} && PROT_WRITE == {{Sys.PROT_WRITE}} && PROT_EXEC == {{Sys.PROT_EXEC}}, "PROT_*");
            _Static_assert(MAP_SHARED == {{Sys.MAP_SHARED}} && MAP_PRIVATE == {{Sys.MAP_PRIVATE}} && MAP_FIXED == {{Sys.MAP_FIXED}} && MAP_ANONYMOUS == {{Sys.MAP_ANONYMOUS}}, "MAP_*");
            _Static_assert(MAP_NORESERVE == {{Sys.MAP_NORESERVE}} && MAP_FIXED_NOREPLACE == {{Sys.MAP_FIXED_NOREPLACE}}, "MAP_NORESERVE, MAP_FIXED_NOREPLACE");
            _Static_assert(MADV_REMOVE == {{Sys.MADV_REMOVE}} && MFD_CLOEXEC == {{Sys.MFD_CLOEXEC}}, "MADV_REMOVE, MFD_CLOEXEC");
            _Static_assert(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE == {{Sys.MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE}}, "membarrier sync core");
            _Static_assert(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE == {{Sys.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE}}, "membarrier register");
            _Static_assert(CLONE_VM == {{Sys.CLONE_VM}} && CLONE_FS == {{Sys.CLONE_FS}} && CLONE_FILES == {{Sys.CLONE_FILES}}, "CLONE_VM FS FILES");
            _Static_assert(CLONE_SIGHAND == {{Sys.CLONE_SIGHAND}} && CLONE_THREAD == {{Sys.CLONE_THREAD}} && CLONE_SYSVSEM == {{Sys.CLONE_SYSVSEM}}, "CLONE_SIGHAND THREAD SYSVSEM");
            _Static_assert(AT_BASE == {{Sys.AT_BASE}} && AT_ENTRY == {{Sys.AT_ENTRY}}, "AT_BASE, AT_ENTRY");
            int main(void) { return 0; }
            """;
        AssertCompiles("constants", c);
    }

    // gcc -fsyntax-only on the C text: throws with gcc's message when a static assertion fails.
    private static void AssertCompiles(string name, string c)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-layout-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, name + ".c"), c);
        TargetBuilder.Run("gcc", "-fsyntax-only", Path.Combine(dir, name + ".c"));
    }
}
