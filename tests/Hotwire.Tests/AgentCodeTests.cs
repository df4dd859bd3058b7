using Hotwire.Agent;
using Iced.Intel;

namespace Hotwire.Tests;

/// <summary>The generated agent code decodes back to what we meant, at the entry points Hotwire uses.</summary>
public class AgentCodeTests
{
    private const ulong Hdr = 0x7f00_0000_0000;
    private const ulong Code = 0x7f00_1000_0000;

    [Fact]
    public void Clone_stub_is_a_syscall_then_the_child_branch_to_the_agent()
    {
        AgentEntryPoints e = AgentCode.Build(Hdr, Code);
        // syscall; test rax,rax; je agent; int3
        Assert.Equal(new[] { "syscall", "test rax,rax", "je", "int3" }, Disassemble(e, e.CloneStub, 4).Select(Text));
        Assert.Equal(e.CloneStub + 2, e.AfterCloneSyscall);
        Assert.Equal(new[] { "syscall", "int3" }, Disassemble(e, e.SyscallInsn, 2).Select(Text));
    }

    [Fact]
    public void Restorer_is_rt_sigreturn()
    {
        AgentEntryPoints e = AgentCode.Build(Hdr, Code);
        // golden bytes: b8 0f 00 00 00  mov eax,0Fh ; 0f 05  syscall
        byte[] golden = [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
        Assert.Equal(golden, e.Code.AsSpan((int)(e.Restorer - Code), golden.Length).ToArray());
    }

    [Fact]
    public void Sigtrap_handler_reads_rip_from_the_ucontext_and_uses_only_caller_saved_registers()
    {
        AgentEntryPoints e = AgentCode.Build(Hdr, Code);
        List<Instruction> handler = Disassemble(e, e.SigtrapHandler, 200).TakeWhile(i => i.IP < e.Restorer).ToList();
        Assert.Equal("push rdi", Format(handler[0]));
        Assert.Equal("push rsi", Format(handler[1]));
        Assert.Contains(handler, i => Format(i) == "mov r8,[rdx+0A8h]"); // 0xa8 = 168 = offsetof(ucontext_t, uc_mcontext.gregs[REG_RIP])
        var calleeSaved = new[] { Register.RBX, Register.RBP, Register.R12, Register.R13, Register.R14, Register.R15 };
        foreach (Instruction i in handler)
        {
            Assert.False(calleeSaved.Contains(i.Op0Register), $"the handler writes a callee-saved register: {Format(i)}");
        }
    }

    private static List<Instruction> Disassemble(AgentEntryPoints e, ulong at, int count)
    {
        var decoder = Decoder.Create(64, new ByteArrayCodeReader(e.Code, (int)(at - Code), e.Code.Length - (int)(at - Code)));
        decoder.IP = at;
        var list = new List<Instruction>();
        for (int i = 0; i < count && decoder.IP < Code + (ulong)e.Code.Length; i++)
        {
            list.Add(decoder.Decode());
        }
        return list;
    }

    private static string Format(Instruction i)
    {
        var f = new IntelFormatter();
        f.Options.SpaceAfterOperandSeparator = false;
        var o = new StringOutput();
        f.Format(i, o);
        return o.ToStringAndReset();
    }

    private static string Text(Instruction i) => i.Mnemonic == Iced.Intel.Mnemonic.Je ? "je" : Format(i);
}
