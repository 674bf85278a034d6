//! Contours of a binary slice mask, for RTSTRUCT.
