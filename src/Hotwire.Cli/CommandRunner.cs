using System.CommandLine;
using System.CommandLine.Parsing;

namespace Hotwire.Cli;

public enum ExitCode
{
    Success = 0,
    Failure = 1,
    UsageError = 2,
    InternalError = 70,

    /// <summary>Ctrl-C or SIGTERM before tracing began (128 + SIGINT, as a shell reports it).</summary>
    Interrupted = 130,
}

/// <summary>Runs the command line and turns every anticipated error into one line on stderr.</summary>
public static class CommandRunner
{
    public static int Run(RootCommand root, string[] args, IReadOnlySet<Command> handlesSignals)
    {
        try
        {
            OptionValues.Humanize(root);
            ParseResult parsed = root.Parse(args);
            string help = parsed.CommandResult.Command is RootCommand ? "hotwire --help" : $"hotwire {parsed.CommandResult.Command.Name} --help";
            if (UnknownOption(parsed) is { } unknown)
            {
                throw new UsageException($"unknown option {unknown}; see {help}");
            }
            if (parsed.Errors.Count > 0)
            {
                foreach (var error in parsed.Errors)
                {
                    Console.Error.WriteLine($"hotwire: {error.Message.TrimEnd('.')}; see {help}");
                }
                return (int)ExitCode.UsageError;
            }
            if (!handlesSignals.Contains(parsed.CommandResult.Command) && !StopSignals.Release())
            {
                throw new InterruptedException("interrupted before it began: nothing was done");
            }
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"hotwire: {e.Message}");
            return (int)ExitCode.UsageError;
        }
        catch (InterruptedException e)
        {
            Console.Error.WriteLine($"hotwire: {e.Message}");
            return (int)ExitCode.Interrupted;
        }
        catch (HotwireException e)
        {
            Console.Error.WriteLine($"hotwire: {e.Message}");
            return (int)ExitCode.Failure;
        }
        catch (IOException e) when (Commands.ReaderOptions.IsBrokenPipe(e))
        {
            return (int)ExitCode.Success; // our output's reader went away (| head): stop, as text tools do
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("HOTWIRE_DEBUG") is null)
        {
            Console.Error.WriteLine($"hotwire: internal error: {e.GetType().Name}: {e.Message} (set HOTWIRE_DEBUG=1 for details; please report it)");
            return (int)ExitCode.InternalError;
        }
    }

    // An unknown option is unmatched, or lands in a command's catch-all argument (-- PROGRAM,
    // FILE|GLOB) where it would be taken for a program or a file. Only what follows a literal --
    // may start with a dash there.
    private static string? UnknownOption(ParseResult parsed)
    {
        var operands = parsed.CommandResult.Children.OfType<ArgumentResult>().SelectMany(a => a.Tokens).ToHashSet(ReferenceEqualityComparer.Instance);
        foreach (Token token in parsed.Tokens)
        {
            if (token.Type == TokenType.DoubleDash)
            {
                break;
            }
            bool operand = operands.Contains(token) || parsed.UnmatchedTokens.Contains(token.Value);
            if (operand && token.Value.Length > 1 && token.Value.StartsWith('-'))
            {
                return token.Value;
            }
        }
        return null;
    }
}

/// <summary>The command line itself is wrong (exit code 2).</summary>
public sealed class UsageException(string message) : HotwireException(message);

/// <summary>Ctrl-C or SIGTERM arrived before tracing began: nothing was traced (exit code 130).</summary>
public sealed class InterruptedException(string message) : HotwireException(message);
