// The CNI versions weft speaks, shared by the router's side (plugin/cni.ts) and the Node plugin
// (cli/weft-cni.ts), which must stay light: nothing else is imported here.
/** The CNI spec versions weft speaks (native/weft-cni.c, which cannot import this, lists them too). */
export const CNI_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

/** A CNI config text's own cniVersion (digits and dots), else the newest: what answers and errors echo. */
export function cniVersionOf(config: string): string {
  return /"cniVersion"\s*:\s*"([0-9.]{1,16})"/.exec(config)?.[1] ?? '1.1.0';
}
