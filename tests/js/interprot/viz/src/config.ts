export const NUM_SEQS_TO_DISPLAY = 9;
