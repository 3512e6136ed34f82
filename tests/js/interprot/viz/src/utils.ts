// Branded string types as viz/src/utils.ts declares them (only the types SAEConfigs.ts needs).
export type AminoAcidSequence = string & { readonly __brand: unique symbol };
export type PDBID = string & { readonly __brand: unique symbol };
