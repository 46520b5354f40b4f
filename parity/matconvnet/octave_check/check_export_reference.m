function check_export_reference(modelDir, imagePath, outDir)
%CHECK_EXPORT_REFERENCE  Run export_reference.m's own logic on real SimpleNN model files, without MatConvNet.
%   Under GNU Octave (no MatConvNet): vl_simplenn and imresize are the
%   stand-ins of this folder, so what is checked is the script itself (it
%   parses and runs; input size, channels and average image taken from what
%   each file carries; trailing loss layers removed; the output written
%   atomically with the fields of FORMAT.md). Prints one line per file.
%
%     octave --no-gui --eval "addpath('parity/matconvnet'); addpath('parity/matconvnet/octave_check'); \
%       check_export_reference('../shared/real-models', 'photo.jpg', '/tmp/refs')"
files = dir(fullfile(modelDir, '*.mat'));
if ~exist(outDir, 'dir'), mkdir(outDir); end
for k = 1:numel(files)
  name = files(k).name;
  out = fullfile(outDir, ['ref_' name]);
  try
    export_reference(fullfile(modelDir, name), imagePath, out, 'matconvnetVersion', 'none (octave_check stand-ins)');
    r = load(out);
    fprintf('OK   %s: input %s, %d layers, last type %s\n', name, mat2str(size(r.input)), numel(r.names), r.types{end});
  catch err
    fprintf('FAIL %s: %s\n', name, strrep(err.message, sprintf('\n'), ' '));
  end
end
end
