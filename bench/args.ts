// Command-line options of the benchmarks: `--name value`, or the default.
export function stringArg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : dflt;
}

export function numberArg(name: string, dflt: number): number {
  return Number(stringArg(name, String(dflt)));
}
