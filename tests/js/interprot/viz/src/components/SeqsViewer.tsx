// The example type of viz/src/components/SeqsViewer.tsx (the component itself is left out).
export interface SeqWithSAEActs {
  sequence: string;
  "3di_sequence"?: string;
  sae_acts: Array<number>;
  alphafold_id: string;
  uniprot_id: string;
  name: string;
}
