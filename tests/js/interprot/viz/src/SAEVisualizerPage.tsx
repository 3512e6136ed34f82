// The feature file type and processData of viz/src/SAEVisualizerPage.tsx, without the page component;
// exported here so a check can call it. The sidebar's lookup of descriptions by dim is kept too.
import { NUM_SEQS_TO_DISPLAY } from "./config";
import { SAEConfig } from "./SAEConfigs";
import { SeqWithSAEActs } from "./components/SeqsViewer";

const actRanges: [number, number][] = [
  [0.75, 1],
  [0.5, 0.75],
  [0.25, 0.5],
  [0, 0.25],
];

export const rangeNames: string[] = actRanges.map(([start, end]) => `${start}-${end}`);

export interface VizFile {
  ranges: {
    [key in `${number}-${number}`]: {
      examples: SeqWithSAEActs[];
    };
  };
  freq_active: number;
  n_seqs: number;
  top_pfam: string[];
  max_act: number;
}

export interface FeatureStats {
  freq_active: number;
  top_pfam: string[];
}

export const processData = (data: VizFile) => {
  const rangeData: { [key: string]: SeqWithSAEActs[] } = {};
  for (const name of rangeNames) {
    if (name in data.ranges) {
      rangeData[name] = data.ranges[name as `${number}-${number}`].examples.slice(0, NUM_SEQS_TO_DISPLAY);
    }
  }
  const featureStats: FeatureStats = { freq_active: data.freq_active, top_pfam: data.top_pfam };
  return { rangeData, featureStats };
};

export const descriptionOf = (config: SAEConfig, feature: number): string => {
  const byDim = new Map(config.curated?.map((entry) => [entry.dim, entry]) || []);
  return byDim.get(feature)?.desc || "";
};
