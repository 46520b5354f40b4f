function res = vl_simplenn(net, x, dzdy, res, varargin)
%VL_SIMPLENN  Stand-in for checking export_reference.m without MatConvNet (check_export_reference.m).
%   Passes the input through unchanged: only the shapes and the script's own
%   logic (input size, channels, loss removal, saving) are exercised.
n = numel(net.layers);
res = struct('x', cell(1, n + 1), 'dzdx', cell(1, n + 1), 'dzdw', cell(1, n + 1));
for i = 1:n + 1
  res(i).x = x;
  res(i).dzdx = zeros(size(x), 'single');
  res(i).dzdw = {};
end
end
