// The namespaces nearly every test file uses: once here instead of at the top of each.
global using System.Diagnostics;
global using Hotwire.Patching;
global using Hotwire.Tests.Infrastructure;
global using Xunit;
global using Xunit.Abstractions;
