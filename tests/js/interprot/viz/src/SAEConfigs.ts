// The SAE registry types of viz/src/SAEConfigs.ts; the registry itself starts empty here.
import { AminoAcidSequence, PDBID } from "./utils";

export type CuratedFeature = {
  name: string;
  dim: number;
  desc: string;
  contributor?: string;
  group?: string;
};

export type SAEConfig = {
  storagePath: string;
  baseModel: string;
  huggingFaceModelName?: string;
  trainingData: string;
  numHiddenDims: number;
  plmLayer: number;
  searchExamples?: { [key: string]: AminoAcidSequence | PDBID };
  curated?: CuratedFeature[];
  defaultDim: number;
  supportsCustomSequence?: boolean;
};

export const SAE_CONFIGS: Record<string, SAEConfig> = {};
