function out = imresize(im, outSize)
%IMRESIZE  Nearest-neighbour stand-in when Octave's image package is absent (check_export_reference.m).
rows = min(size(im, 1), max(1, round(((1:outSize(1)) - 0.5) * size(im, 1) / outSize(1) + 0.5)));
cols = min(size(im, 2), max(1, round(((1:outSize(2)) - 0.5) * size(im, 2) / outSize(2) + 0.5)));
out = im(rows, cols, :);
end
